"""scripts/bench.py's parts, one job each: verdicts (figures, statistics, tables), resources
(its networks and containers), probes (timings, data plane), floor (the floor remote driver),
pynet_side (what it reads of the instance under test)."""

import ipaddress
import re

BRIDGE = "bridge"
POOL = ipaddress.IPv4Network("10.232.0.0/16")  # this benchmark's range; tests use 10.231/16
# /26 each: 200 growth networks per driver (400) do not fit into the pool as /24s.
SUBNET_PREFIX = 26
# Container run is among the figures closest to their targets, and each sample is mostly
# dockerd's work with a few ms of the driver's in it: this many samples a round, of each
# driver and of the floor, keep their medians steady.
RUN_SAMPLES = 3
# Network connect is cheap and each sample's spread is wide: more of them a round.
CONNECT_SAMPLES = 6
SERVER_HOST = 10  # the server container's fixed address: <subnet> + 10
ECHO_PORT, SINK_PORT = 5002, 5003
# In the server container: a TCP echo and a TCP sink, each forking per connection (-ll).
SERVER_CMD = (f"nc -ll -p {ECHO_PORT} -e cat & "
              f"nc -ll -p {SINK_PORT} -e dd of=/dev/null bs=1M & exec sleep 3600")
CALL_LINE = re.compile(r"\s(\w+) ok (\d+(?:\.\d+)?)ms\s*$")

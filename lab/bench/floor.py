"""The floor remote driver: what dockerd spends on a remote driver by itself."""

import http.server
import json
import socket
import socketserver
import threading
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


class Links:
    """The floor's netlink: one socket, made on first use, one request at a time."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None
        self._lock = threading.Lock()

    def __call__(self, command: str, **spec: str) -> None:
        with self._lock:
            if self._ipr is None:
                self._ipr = IPRoute()
            try:
                self._ipr.link(command, **spec)
            except NetlinkError:
                pass  # a retried call: the pair is there (add) or gone with its peer (del)


def floor_answer(path: str, raw: bytes, links: Links) -> dict:
    """The answer to the call at ``path``, doing only what a container cannot start without:
    a veth pair per endpoint, whose container end Join hands to dockerd."""
    call = path.rsplit(".", 1)[-1]
    endpoint = str(json.loads(raw or b"{}").get("EndpointID", ""))[:12]
    if call == "Activate":
        return {"Implements": ["NetworkDriver"]}
    if call == "GetCapabilities":
        return {"Scope": "local"}
    if call == "CreateEndpoint":
        links("add", ifname=f"pfh{endpoint}", kind="veth", peer=f"pfc{endpoint}")
    elif call == "Join":
        # No gateway to give: without DisableGatewayService dockerd would attach every
        # container to docker_gwbridge too (a second, bridge-driver endpoint), and the
        # floor would measure that attach as well.
        return {"InterfaceName": {"SrcName": f"pfc{endpoint}", "DstPrefix": "eth"},
                "DisableGatewayService": True}
    elif call == "DeleteEndpoint":
        links("del", ifname=f"pfh{endpoint}")
    return {}


class _FloorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``floor_answer`` with the standard library's HTTP server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd's plugin client expects
    links = Links()

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = json.dumps(floor_answer(self.path, raw, self.links)).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        """Quiet: the benchmark's output is the table."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = self.socket.accept()
        return conn, ("local", 0)  # http.server wants a (host, port) client address


class FloorDriver:
    """A remote driver that does only what dockerd cannot do without, served from this
    process: nothing for a network, a veth pair for an endpoint. What dockerd spends with it
    (CLI, API, IPAM, its store, the plugin calls, moving and configuring the interface) is
    what it spends on a remote driver by itself, which no remote driver can go below. Shown
    next to the bridge driver's figures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/docker/plugins/{name}.sock"
        self._server: _UnixServer | None = None

    def start(self) -> None:
        Path(self.path).unlink(missing_ok=True)
        self._server = _UnixServer(self.path, _FloorHandler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        Path(self.path).unlink(missing_ok=True)

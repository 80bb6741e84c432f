"""The floor remote driver: what dockerd spends on a remote driver by itself."""

import http.server
import json
import socket
import socketserver
import threading
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError


class _FloorHandler(http.server.BaseHTTPRequestHandler):
    """Answers every remote-driver call at once, doing only what a container cannot start
    without: a veth pair per endpoint, whose container end Join hands to dockerd."""

    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd's plugin client expects
    ipr: IPRoute | None = None
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = self.path.rsplit(".", 1)[-1]
        endpoint = str(json.loads(raw or b"{}").get("EndpointID", ""))[:12]
        body: dict = {}
        if call == "Activate":
            body = {"Implements": ["NetworkDriver"]}
        elif call == "GetCapabilities":
            body = {"Scope": "local"}
        elif call == "CreateEndpoint":
            self._links("add", ifname=f"pfh{endpoint}", kind="veth", peer=f"pfc{endpoint}")
        elif call == "Join":
            # No gateway to give: without DisableGatewayService dockerd would attach every
            # container to docker_gwbridge too (a second, bridge-driver endpoint), and the
            # floor would measure that attach as well.
            body = {"InterfaceName": {"SrcName": f"pfc{endpoint}", "DstPrefix": "eth"},
                    "DisableGatewayService": True}
        elif call == "DeleteEndpoint":
            self._links("del", ifname=f"pfh{endpoint}")
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _links(self, command: str, **spec: str) -> None:
        with self.lock:
            if _FloorHandler.ipr is None:
                _FloorHandler.ipr = IPRoute()
            try:
                _FloorHandler.ipr.link(command, **spec)
            except NetlinkError:
                pass  # a retried call: the pair is there (add) or gone with its peer (del)

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

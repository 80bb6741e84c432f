"""The floor driver's answers served by pynet's own HTTP stack.

``lab.bench.floor`` answers with the standard library's HTTP server; here the same answers
(``floor_answer``) come from a Flask app in gunicorn with pynet's settings and worker
(``plugin.server.Server``, ``plugin.worker``). The benchmark times network connect with both:
the difference is what the HTTP stack pynet is built on costs dockerd's calls by itself,
before pynet decides or builds anything.

Runs as ``python -m lab.bench.stackfloor`` with ``PYNET_NAME`` set, serving
``/run/docker/plugins/<name>.sock`` until SIGTERM; ``StackFloorDriver`` does that.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from lab import REPO, wait_for
from lab.bench.floor import CONTENT_TYPE, Links, floor_answer
from plugin.config import from_env
from plugin.server import Server


def floor_app() -> Flask:
    """A Flask app giving ``floor_answer`` to every call."""
    app = Flask("stackfloor")
    links = Links()

    @app.post("/<path:path>")
    def call(path: str) -> Response:
        return Response(json.dumps(floor_answer(path, request.get_data(), links)),
                        mimetype=CONTENT_TYPE)

    return app


class _StackFloorServer(Server):
    """pynet's gunicorn setup serving the floor app instead of a driver."""

    def load(self) -> Any:
        return floor_app()


class StackFloorDriver:
    """The stack floor as a socket plugin named ``name``, in a process of its own (gunicorn
    forks its worker and takes over signals)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/docker/plugins/{name}.sock"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "lab.bench.stackfloor"], cwd=REPO,
            env={**os.environ, "PYNET_NAME": self.name, "PYNET_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL)
        wait_for(f"the stack floor {self.name} to listen", lambda: os.path.exists(self.path),
                 timeout=30)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
        Path(self.path).unlink(missing_ok=True)


if __name__ == "__main__":
    _StackFloorServer(from_env()).run()

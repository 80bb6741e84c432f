"""``pynet serve``'s master listens before the driver is imported (``plugin.server``): what
the master loads, up to the point where gunicorn binds the socket, leaves Flask, pyroute2 and
the driver to the worker."""

import json
import subprocess
import sys
from pathlib import Path

# Packages and modules the worker imports when it loads the app.
WORKER_ONLY = ("flask", "werkzeug", "pyroute2", "plugin.app", "plugin.driver", "plugin.netlink",
               "plugin.reconcile", "plugin.service")

# A fresh interpreter: the pynet command's module and gunicorn's master, set up as
# ``pynet serve`` sets it up, without running (nothing is bound).
MASTER = """
import json, sys
from gunicorn.arbiter import Arbiter
import plugin.cli
from plugin.config import Settings
from plugin.server import Server
Arbiter(Server(Settings(name="pnimports", state_dir=sys.argv[1], socket_dir=sys.argv[1])))
print(json.dumps(sorted(sys.modules)))
"""


def test_the_master_leaves_flask_pyroute2_and_the_driver_to_the_worker(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", MASTER, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "plugin.worker" in loaded  # the master did load its worker class
    early = [m for m in loaded if any(m == w or m.startswith(f"{w}.") for w in WORKER_ONLY)]
    assert not early, f"imported before the socket listens: {early}"

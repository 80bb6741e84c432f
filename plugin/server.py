"""``pynet serve``: gunicorn embedded, one worker (state lives in one process), a few threads.

The master process listens before anything imports the driver: it imports gunicorn, the worker
class and the settings (which bring the record and rule types), and the worker imports
``plugin.service`` when it loads the app. dockerd (20.10 to 29) enables a managed plugin by
dialling its socket 500 ms after starting it and, when nothing listens yet, trying again 3 s
later. With Flask, pyroute2 and the driver imported ahead of the listen, pynet listened at
about that deadline, and an enable, or a dockerd start with the plugin enabled, took 3 s longer
whenever the host was a little busy. Calls that arrive before the worker is ready wait in the
listener's backlog.
"""

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from plugin.config import Settings
from plugin.owner import claim
from plugin.privileges import drop_privileges

if TYPE_CHECKING:
    from plugin.driver import Driver

log = logging.getLogger("plugin")

# Connections served at once, a thread each (plugin.worker); the worker also runs its main
# thread, the reconciler, the reaper and the driver's side thread (CreateNetwork's
# iptables-restore).
CALL_THREADS = 8
WORKER_THREADS = 1 + 3 + CALL_THREADS


def serve(settings: Settings) -> int:
    """Serve until stopped, as the instance's only server, with pynet's privileges only."""
    os.makedirs(settings.socket_dir, exist_ok=True)
    # Held (the descriptor stays open) until the process exits.
    claim(settings, "another server can start", wait=settings.call_deadline)
    # Calls are short bursts of Python between syscalls, while the periodic check decodes
    # every link and rule on the host in one go: with the default switch interval each GIL
    # hand-over makes a call wait that long. Handing over every millisecond keeps calls moving.
    sys.setswitchinterval(0.001)
    drop_privileges()
    Server(settings).run()
    return 0


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn with pynet's settings and worker (``plugin.worker``), serving the driver."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.driver: Driver | None = None  # once the worker has loaded
        super().__init__()

    def load_config(self) -> None:
        config = {
            "bind": f"unix:{self.settings.socket_path}",
            "workers": 1,
            "worker_class": "plugin.worker.ConnectionWorker",
            "threads": CALL_THREADS,
            "umask": 0o117,  # socket 0660, root's
            "timeout": 60,
            "graceful_timeout": 5,
            # Seconds an idle dockerd connection stays open, holding one of the CALL_THREADS
            # slots; dockerd's calls for one command come milliseconds apart, so 1 s (the
            # least) loses nothing. A stop ends idle connections at once (plugin.worker).
            "keepalive": 1,
            "errorlog": "-",
            "control_socket_disable": True,  # no listener beyond the plugin socket
            "worker_exit": self._finish_deletes,
            "loglevel": self.settings.log_level,
            "logconfig_dict": {
                "version": 1,
                "disable_existing_loggers": False,
                "root": {"level": self.settings.log_level.upper(), "handlers": ["stdout"]},
                "loggers": {"gunicorn.error": {"handlers": ["stdout"], "propagate": False,
                                               "level": self.settings.log_level.upper()}},
                "handlers": {"stdout": {"class": "logging.StreamHandler",
                                        "stream": "ext://sys.stdout", "formatter": "plain"}},
                "formatters": {"plain": {
                    "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            },
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from plugin.service import serving_app  # in the worker, after the listen: see above

        self.driver, app = serving_app(self.settings)
        return app

    def _finish_deletes(self, _server: object, _worker: object) -> None:
        """On a clean stop, do the kernel side of deletes already answered (otherwise the
        next start would), so a disabled plugin leaves no bridge of a removed network."""
        if self.driver is not None:
            try:
                self.driver.reap()
            except Exception:
                log.exception("finishing deletes at exit failed; the next start will")

"""pynet's gunicorn worker: a dockerd connection is served by one thread from start to end.

dockerd keeps a handful of connections to a plugin and sends one call at a time on each.
gunicorn's ``gthread`` worker hands every request on a kept-alive connection from its main
thread's poller to a pool thread (and the connection back after the answer): two thread
wake-ups a call, which are slow on a virtualised host, and a ``docker run`` or ``network
connect`` is five to seven calls. Here a thread keeps its connection, blocked in ``recv``
between calls, until it closes (README, Benchmark, has the measurements). The HTTP parsing
and WSGI plumbing are gunicorn's.

The threads are a pool of at most ``threads`` (the setting's meaning in gunicorn: calls
served at once), started as connections overlap and kept for the next connection: a docker
command does not pay for a thread's start, and whatever a library keeps per thread stays
bounded (pyroute2 did keep a socket per thread, before plugin.netlink shared one). While
every thread has a connection, more wait in the listener's backlog. A stop (SIGTERM) closes
the listener, ends idle connections at once (a request already in their socket is still read
and answered, with ``Connection: close``) and waits up to ``graceful_timeout`` for calls in
progress.
"""

import contextlib
import os
import queue
import select
import socket
import threading
import time

from gunicorn.http import RequestParser, wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import base

# A connection, its peer's address and the listener it came in on.
_Accepted = tuple[socket.socket, object, socket.socket]


class _Gathered:
    """The connection as an answer's writer sees it (gunicorn's Response writes with
    ``sendall`` only): the head and the body go out in one send when the answer is complete,
    so dockerd's reader is woken once, not twice."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self._parts.append(data)

    def flush(self) -> None:
        """Send what was written."""
        self._conn.sendall(b"".join(self._parts))
        self._parts.clear()


class ConnectionWorker(base.Worker):  # type: ignore[misc]
    """A gunicorn worker whose threads each serve a connection at a time (see the module
    docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._idle: dict[socket.socket, bool] = {}  # open connections: waiting for a call?
        self._threads: list[threading.Thread] = []
        self._spare = 0  # threads waiting for a connection
        self._accepted: queue.SimpleQueue[_Accepted | None] = queue.SimpleQueue()

    def run(self) -> None:
        """Accept connections until told to stop (or orphaned), then stop gracefully."""
        for listener in self.sockets:
            listener.setblocking(False)
        while self.alive and self.ppid == os.getppid():
            self.notify()  # the arbiter's heartbeat
            # self.PIPE[0] wakes on every signal (base.Worker sets the wakeup fd) and when a
            # connection closes while all slots were taken.
            with self._lock:
                full = len(self._idle) >= self.cfg.threads
            readable, _, _ = select.select([self.PIPE[0]] if full else self.wait_fds, [], [],
                                           1.0)
            for fd in readable:
                if fd == self.PIPE[0]:
                    os.read(fd, 64)
                else:
                    self._accept(fd)
        self._stop()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another accept took it, or the client gave up
        with self._lock:
            self._idle[conn] = True
            if self._spare:
                self._spare -= 1
            else:  # fewer threads than connections, so fewer than ``threads``
                thread = threading.Thread(target=self._take_connections, name="call",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        self._accepted.put((conn, addr, listener))

    def _take_connections(self) -> None:
        """A pool thread: serve accepted connections, one at a time, until the stop."""
        while (accepted := self._accepted.get()) is not None:
            self._serve(*accepted)

    def _serve(self, conn: socket.socket, addr: object, listener: socket.socket) -> None:
        """Answer the calls on one connection until it closes, idles past keepalive, or the
        worker stops."""
        conn.settimeout(self.cfg.keepalive)  # also bounds a stalled request
        parser = RequestParser(self.cfg, conn, addr)
        server = listener.getsockname()
        req = None
        try:
            for req in parser:
                with self._lock:
                    self._idle[conn] = False
                keep = self._answer(req, conn, addr, server)
                with self._lock:
                    self._idle[conn] = True
                    if not (keep and self.alive):
                        break
        except (StopIteration, NoMoreData, OSError):
            pass  # closed, idle past keepalive, or ended by a stop
        except Exception as exc:
            self.handle_error(req, conn, addr, exc)  # a 400 for a malformed request
        finally:
            with self._lock:
                was_full = len(self._idle) >= self.cfg.threads
                del self._idle[conn]
                self._spare += 1  # this thread, once the connection is closed
            conn.close()
            if was_full:
                with contextlib.suppress(BlockingIOError):  # a wake-up is pending anyway
                    os.write(self.PIPE[1], b".")  # the main thread may accept again

    def _answer(self, req: object, conn: socket.socket, addr: object, server: object) -> bool:
        """Run the app for one request; whether the connection may carry another."""
        resp, environ = wsgi.create(req, conn, addr, server, self.cfg)
        environ["wsgi.multithread"] = True
        resp.sock = out = _Gathered(conn)
        body = self.wsgi(environ, resp.start_response)
        if not self.alive:  # before the head is written: a stop came during the call
            resp.force_close()
        try:
            for chunk in body:
                resp.write(chunk)
            resp.close()
            out.flush()
        finally:
            if hasattr(body, "close"):
                body.close()  # runs the app's call_on_close hooks
        return not resp.should_close()

    def _stop(self) -> None:
        for listener in self.sockets:
            listener.close()
        with self._lock:
            for conn, idle in self._idle.items():
                if idle:
                    try:
                        conn.shutdown(socket.SHUT_RD)  # its recv: what is queued, then EOF
                    except OSError:
                        pass  # the client closed it already
            threads = list(self._threads)
        for _ in threads:
            self._accepted.put(None)  # after any connection still queued
        deadline = time.monotonic() + self.cfg.graceful_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

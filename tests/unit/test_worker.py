"""plugin.worker under a real gunicorn arbiter on a Unix socket: a connection keeps its
thread, threads are kept for later connections, keep-alive, the cap on open connections, and
a stop that ends idle connections at once while calls in progress finish."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab import REPO, wait_for

# A gunicorn server with pynet's worker and an app that answers with the serving thread's
# id; /slow tells the test it started (a file) and answers once the test writes the fifo;
# /halves returns its body in two parts and waits for the fifo between them.
SERVER = textwrap.dedent('''
    import os, sys, threading
    from gunicorn.app.base import BaseApplication

    sock, workdir, threads, keepalive = sys.argv[1:5]

    def wait_for_release():
        open(os.path.join(workdir, "entered"), "w").close()
        with open(os.path.join(workdir, "release")) as fifo:
            fifo.read()

    def halves():
        yield b"a"
        wait_for_release()
        yield b"b"

    def app(environ, start_response):
        environ["wsgi.input"].read()
        if environ["PATH_INFO"] == "/halves":
            start_response("200 OK", [("Content-Length", "2")])
            return halves()
        if environ["PATH_INFO"] == "/slow":
            wait_for_release()
        body = str(threading.get_ident()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": "unix:" + sock, "workers": 1,
                               "worker_class": "plugin.worker.ConnectionWorker",
                               "threads": int(threads), "keepalive": int(keepalive),
                               "graceful_timeout": 10, "errorlog": "-"}.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()
''')


@contextmanager
def server(tmp_path: Path, threads: int = 4, keepalive: int = 30
           ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The server running on ``tmp_path``/s.sock; stopped (killed if it must be) on exit."""
    script, sock, log = tmp_path / "server.py", tmp_path / "s.sock", tmp_path / "server.log"
    script.write_text(SERVER)
    os.mkfifo(tmp_path / "release")
    # gunicorn's log goes to a file: a pipe nobody reads while the server runs could fill
    # and block it.
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(sock), str(tmp_path),
                                 str(threads), str(keepalive)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("the server's socket", lambda: sock.is_socket() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def connect(sock: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(10)
    conn.connect(str(sock))
    return conn


def send(conn: socket.socket, path: str = "/call") -> None:
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\r\n{{}}"
                 .encode())


def answer(conn: socket.socket) -> tuple[str, str]:
    """One response's head and body (the app's bodies are short and sent at once)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(4096)
    return head.decode(), body.decode()


def call(conn: socket.socket, path: str = "/call") -> tuple[str, str]:
    send(conn, path)
    return answer(conn)


def test_a_connection_keeps_its_thread_across_calls(tmp_path: Path) -> None:
    with server(tmp_path) as (_, sock):
        first, second = connect(sock), connect(sock)
        try:
            head, thread = call(first)
            assert head.startswith("HTTP/1.1 200"), head
            assert "connection: close" not in head.lower()
            assert call(first)[1] == thread  # kept alive, on the same thread
            assert call(second)[1] != thread  # another connection, another thread
        finally:
            first.close()
            second.close()


def test_connections_one_after_another_share_a_thread(tmp_path: Path) -> None:
    """Threads are kept for the next connection (each holds a netlink socket in pynet)."""
    with server(tmp_path) as (_, sock):
        threads = set()
        for _ in range(10):
            conn = connect(sock)
            try:
                threads.add(call(conn)[1])
                conn.shutdown(socket.SHUT_WR)
                assert conn.recv(1) == b""  # the server closed it: its thread is free
            finally:
                conn.close()
        assert len(threads) == 1, threads


def test_an_idle_connection_closes_after_keepalive(tmp_path: Path) -> None:
    with server(tmp_path, keepalive=1) as (_, sock):
        conn = connect(sock)
        try:
            call(conn)
            assert conn.recv(1) == b""  # EOF from the server, well within the 10 s timeout
        finally:
            conn.close()


def test_connections_beyond_threads_wait_in_the_backlog(tmp_path: Path) -> None:
    with server(tmp_path, threads=2) as (_, sock):
        held = [connect(sock), connect(sock)]
        waiting = connect(sock)
        try:
            for conn in held:
                call(conn)  # both slots taken by connections kept alive
            send(waiting)
            waiting.settimeout(0.5)
            try:
                early = waiting.recv(1)
            except TimeoutError:
                early = b""
            assert early == b"", "a third connection was served while two slots were taken"
            held.pop().close()
            waiting.settimeout(10)
            assert answer(waiting)[0].startswith("HTTP/1.1 200")
        finally:
            for conn in (*held, waiting):
                conn.close()


def test_a_stop_ends_idle_connections_and_lets_calls_finish(tmp_path: Path) -> None:
    with server(tmp_path, keepalive=30) as (proc, sock):
        idle, busy = connect(sock), connect(sock)
        try:
            call(idle)
            send(busy, "/slow")
            wait_for("the slow call to start", (tmp_path / "entered").exists)
            os.kill(proc.pid, signal.SIGTERM)  # the arbiter passes it to the worker
            assert idle.recv(1) == b""  # ended at once, not after its 30 s keepalive
            assert proc.poll() is None  # still serving the call in progress
            with open(tmp_path / "release", "w") as fifo:
                fifo.write("go")
            head, _ = answer(busy)
            assert head.startswith("HTTP/1.1 200") and "connection: close" in head.lower()
            assert proc.wait(10) == 0
        finally:
            idle.close()
            busy.close()


def test_an_answer_goes_out_in_one_send(tmp_path: Path) -> None:
    """Head and body together, so dockerd's reader wakes once, even from an app that returns
    its body in parts."""
    with server(tmp_path) as (_, sock):
        conn = connect(sock)
        try:
            send(conn, "/halves")
            wait_for("the app to return its first half", (tmp_path / "entered").exists)
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(4096)  # neither the head nor "a" went out
            conn.settimeout(10)
            with open(tmp_path / "release", "w") as fifo:
                fifo.write("go")
            data = conn.recv(65536)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nab"), data
        finally:
            conn.close()


def test_a_malformed_request_gets_400(tmp_path: Path) -> None:
    with server(tmp_path) as (_, sock):
        conn = connect(sock)
        try:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 400")
        finally:
            conn.close()

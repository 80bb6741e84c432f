"""The HTTP layer: remote-driver JSON in, driver calls, JSON (or ``{"Err": ...}``) out.

Nothing here decides anything. dockerd sends no Content-Type and empty bodies for the handshake,
so bodies are parsed by hand; every error, including ones pynet did not foresee, becomes a JSON
``Err`` so dockerd shows the user a sentence instead of an HTML page.
"""

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from plugin import protocol
from plugin.driver import Driver, gateway_skips
from plugin.errors import Busy, InvalidRequest, PynetError
from plugin.faults import checkpoint

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 1 << 20  # dockerd's largest bodies are a few KiB; refuse anything absurd
# dockerd shows Err verbatim and pynet logs it: a hostile request must not make either huge.
MAX_ERR = 1000
# Calls dockerd sends without a body; every other call names its network at least.
BODYLESS = frozenset({"GetCapabilities"})


def loggable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with control characters, backslashes and non-ASCII
    escaped (a newline becomes the two characters \\n). Request values go into pynet's one-line
    log records and dockerd's: raw, a newline in a URL (``NetworkDriver.Foo%0a...``) would start
    a line that reads like pynet's own. Plain ASCII, every name dockerd sends, stays as it is."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return cut.encode("unicode_escape").decode("ascii")


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=CONTENT_TYPE)


def _error(text: str, status: int = 200) -> Response:
    cut = text if len(text) <= MAX_ERR else text[:MAX_ERR] + "... (truncated)"
    return _reply(protocol.error_reply(cut), status)


def _read_body() -> bytes:
    """The body, at most MAX_BODY bytes: MAX_CONTENT_LENGTH refuses a declared length that is
    too long, but a chunked body has none and would otherwise be read whole into memory."""
    chunks: list[bytes] = []
    size = 0
    while chunk := request.stream.read(65536):  # a read may return less than asked
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestEntityTooLarge(f"pynet takes request bodies of at most {MAX_BODY} "
                                        "bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _body(method: str, driver: Driver | None = None) -> Any:
    raw = _read_body()
    if not raw.strip():
        if method in BODYLESS:
            return {}
        # dockerd's plugin client re-sends a call whose connection broke (pynet restarted
        # mid-call) with the body already consumed. pynet rolls the first attempt back at
        # start, so the honest answer is: nothing was done, run the command again - once that
        # start-up repair is over, since the user acts on this answer.
        if driver is not None:
            driver.ready.wait(driver.settings.call_deadline)
        raise InvalidRequest(f"NetworkDriver.{method} arrived without a body; dockerd sends "
                             "that when it retries a call that pynet was restarted in the "
                             "middle of. pynet undid the interrupted call: run the command again")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidRequest(f"request body is not valid JSON: {reason}") from None


def _create_endpoint(d: Driver, body: Any) -> dict[str, Any]:
    return protocol.create_endpoint_reply(d.create_endpoint(protocol.CreateEndpoint.parse(body)))


def _join(d: Driver, body: Any) -> dict[str, Any]:
    joined = d.join(protocol.Join.parse(body))
    return protocol.join_reply(joined.src_name, joined.dst_prefix, joined.gateway,
                               joined.gateway_v6)


def _empty(action: Callable[[Driver, Any], None]) -> Callable[[Driver, Any], dict[str, Any]]:
    def handler(d: Driver, body: Any) -> dict[str, Any]:
        action(d, body)
        return {}
    return handler


def _endpoint_ref(body: Any) -> protocol.EndpointRef:
    return protocol.EndpointRef.parse(body)


# Calls that change or read driver state; each runs under the driver's lock.
DRIVER_CALLS: dict[str, Callable[[Driver, Any], dict[str, Any]]] = {
    "CreateNetwork": _empty(lambda d, b: d.create_network(protocol.CreateNetwork.parse(b))),
    "DeleteNetwork": _empty(lambda d, b: d.delete_network(protocol.NetworkRef.parse(b))),
    "CreateEndpoint": _create_endpoint,
    "DeleteEndpoint": _empty(lambda d, b: d.delete_endpoint(_endpoint_ref(b))),
    "EndpointOperInfo": lambda d, b: protocol.oper_info_reply(d.endpoint_info(_endpoint_ref(b))),
    "Join": _join,
    "Leave": _empty(lambda d, b: _endpoint_ref(b)),
    "ProgramExternalConnectivity": _empty(
        lambda d, b: d.program_external(protocol.ProgramExternalConnectivity.parse(b))),
    "RevokeExternalConnectivity": _empty(lambda d, b: d.revoke_external(_endpoint_ref(b))),
}

# Deletes that dockerd completes whatever pynet answers: when pynet is too busy to do one in
# time, it records the intent instead of refusing (which would leak the bridge or veth).
DEFER_WHEN_BUSY: dict[str, Callable[[Driver, Any], None]] = {
    "DeleteNetwork": lambda d, b: d.defer_delete(protocol.NetworkRef.parse(b).network_id),
    "DeleteEndpoint": lambda d, b: d.defer_delete(*_ids(_endpoint_ref(b))),
    "Leave": lambda d, b: None,
}


def _ids(ref: protocol.EndpointRef) -> tuple[str, str]:
    return ref.network_id, ref.endpoint_id


def _gw_alloc_check(body: Any) -> dict[str, Any]:
    skip_v4, skip_v6 = gateway_skips(protocol.GwAllocCheck.parse(body).options)
    return protocol.gw_alloc_check_reply(skip_v4, skip_v6)


# Calls that need no state: capabilities, the gateway allocation check, and swarm-only and
# discovery calls a local driver acknowledges.
STATELESS_CALLS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "GetCapabilities": lambda b: protocol.CAPABILITIES,
    "GwAllocCheck": _gw_alloc_check,
    "AllocateNetwork": lambda b: (protocol.NetworkRef.parse(b), protocol.ALLOCATE_NETWORK)[1],
    "FreeNetwork": lambda b: (protocol.NetworkRef.parse(b), {})[1],
    "DiscoverNew": lambda b: (protocol.Discovery.parse(b), {})[1],
    "DiscoverDelete": lambda b: (protocol.Discovery.parse(b), {})[1],
}


def create_app(driver: Driver) -> Flask:
    """The Flask app serving ``driver``."""
    app = Flask("pynet")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.post("/Plugin.Activate")
    def activate() -> Response:
        return _reply(protocol.ACTIVATE)

    @app.post("/NetworkDriver.<method>")
    def network_driver(method: str) -> Response:
        started = time.monotonic()
        outcome = "ok"
        try:
            if method in STATELESS_CALLS:
                return _reply(STATELESS_CALLS[method](_body(method)))
            if method not in DRIVER_CALLS:
                outcome = "unknown"
                return _error(f"unknown method NetworkDriver.{loggable(method, 80)}", 404)
            checkpoint(f"received.{method}")  # as if pynet were down when the call came
            body = _body(method, driver)
            try:
                with driver.locked():
                    answer = _reply(DRIVER_CALLS[method](driver, body))
                answer.call_on_close(driver.rules_due.start)  # once the answer is out
                return answer
            except Busy:
                if method not in DEFER_WHEN_BUSY:
                    raise
                DEFER_WHEN_BUSY[method](driver, body)
                outcome = "deferred: busy"
                return _reply({})
        except PynetError as exc:
            outcome = f"refused: {exc}"
            return _error(str(exc))
        except HTTPException as exc:  # e.g. a body over MAX_BODY; http_error answers it
            outcome = f"refused: {exc.code} {exc.name}"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            log.info("%s %s %.1fms", loggable(method, 80), loggable(outcome, MAX_ERR),
                     (time.monotonic() - started) * 1000)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(f"{exc.code} {exc.name}: {exc.description}", exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("internal error")
        return _error(f"pynet internal error: {type(exc).__name__}: {exc}; see the plugin log",
                      500)

    return app

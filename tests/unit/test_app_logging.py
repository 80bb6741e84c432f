"""pynet's log: what a request carries cannot forge lines in it, nor in dockerd's."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from flask.testing import FlaskClient

from plugin.app import create_app, loggable
from plugin.driver import Driver
from plugin.errors import InvalidRequest
from tests.unit.test_protocol import network_body


class RefusingDriver:
    """The little of a Driver the HTTP layer touches; every network it is asked for fails
    with ``message``, as a driver error naming a user's value would."""

    def __init__(self, message: str) -> None:
        self.message = message

    @contextmanager
    def locked(self) -> Iterator[None]:
        yield

    def create_network(self, _req: Any) -> None:
        raise InvalidRequest(self.message)


def client(message: str = "") -> FlaskClient:
    return create_app(cast(Driver, RefusingDriver(message))).test_client()


def call_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "plugin.app"]


def test_unknown_method_with_a_newline_is_logged_on_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugin.app")
    reply = client().post("/NetworkDriver.Foo%0a2024-01-01 INFO plugin.app: CreateNetwork ok")
    assert reply.status_code == 404
    [record] = call_records(caplog)
    assert "\n" not in record
    assert record.startswith("Foo\\n2024-01-01 INFO plugin.app: CreateNetwork ok unknown ")
    assert "\n" not in reply.get_json()["Err"]


def test_refusal_with_a_newline_in_its_message_is_logged_on_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugin.app")
    reply = client("bridge 'x\nFAKE line' is bad").post("/NetworkDriver.CreateNetwork",
                                                        json=network_body())
    assert reply.get_json()["Err"] == "bridge 'x\nFAKE line' is bad"
    [record] = call_records(caplog)
    assert record.startswith("CreateNetwork refused: bridge 'x\\nFAKE line' is bad ")


def test_calls_dockerd_makes_keep_their_plain_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugin.app")
    client().post("/NetworkDriver.GetCapabilities")
    [record] = call_records(caplog)
    assert record.startswith("GetCapabilities ok ") and record.endswith("ms")


@pytest.mark.parametrize("text,logged", [
    ("CreateNetwork", "CreateNetwork"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("back\\nslash", "back\\\\nslash"),  # an escaped newline cannot be faked either
    ("x\u2028y\x85z\x1b[31m", "x\\u2028y\\x85z\\x1b[31m"),
    ("é", "\\xe9"),
])
def test_loggable_escapes_what_could_break_or_fake_a_line(text: str, logged: str) -> None:
    assert loggable(text, 80) == logged


def test_loggable_cuts_long_values() -> None:
    assert loggable("a" * 100, 80) == "a" * 80 + "..."

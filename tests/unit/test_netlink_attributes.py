"""The attribute walk behind pynet's reduced link and address replies (plugin.netlink)."""

import struct

from plugin.netlink import _attributes


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes as the kernel sends it."""
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_wanted_attributes_are_picked_and_flag_bits_ignored() -> None:
    chain = attr(3, b"pnbr0\0") + attr(7, b"x" * 9) + attr(0x8000 | 18, attr(1, b"veth\0"))
    found = _attributes(chain, 0, len(chain), {3, 18})
    assert found == {3: b"pnbr0\0", 18: attr(1, b"veth\0")}


def test_first_of_repeated_attributes_wins() -> None:
    chain = attr(4, struct.pack("I", 1400)) + attr(4, struct.pack("I", 9000))
    assert _attributes(chain, 0, len(chain), {4}) == {4: struct.pack("I", 1400)}


def test_truncated_or_malformed_chains_end_the_walk() -> None:
    chain = attr(3, b"pnbr0\0") + attr(4, struct.pack("I", 1400))
    assert _attributes(chain[:-2], 0, len(chain), {3, 4}) == {3: b"pnbr0\0"}
    assert _attributes(chain, 0, len(chain) + 100, {3}) == {3: b"pnbr0\0"}
    zero_length = struct.pack("HH", 0, 3) + attr(3, b"never\0")
    assert _attributes(zero_length, 0, len(zero_length), {3}) == {}

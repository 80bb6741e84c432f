"""Hashes computed once, for immutable values used over and over as cache keys."""

import dataclasses
import functools


class HashedOnce:
    """For a frozen dataclass that is a cache key on every firewall change (a network's
    configuration and its rules' spec, once per network each time): its generated hash
    hashes every field again, addresses included, at each lookup. A subclass sets
    ``__hash__ = HashedOnce.hash_once`` in its own body (``dataclass`` replaces an inherited
    one); equal values still hash equal, as the fields never change."""

    @functools.cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))  # type: ignore[arg-type]

    def hash_once(self) -> int:
        """The hash of the fields, computed at the first call."""
        return self._hash

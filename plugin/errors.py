"""Error types that reach the user as ``{"Err": ...}``.

Every message names the offending value and says what to do, because dockerd shows it verbatim
(``Error response from daemon: remote: <message>``) and the user has nothing else to go on.
"""


class PynetError(Exception):
    """Base of every error pynet reports to dockerd."""


class InvalidRequest(PynetError):
    """The request or one of its options is malformed; nothing was changed."""


class Conflict(PynetError):
    """The request is well-formed but collides with something that exists (a bridge, a port)."""


class NotFound(PynetError):
    """The request names a network or endpoint pynet has no record of."""


class KernelError(PynetError):
    """A netlink, sysctl or iptables operation failed; the message names the object."""


class Busy(PynetError):
    """pynet could not get to the request within its deadline (still starting, or overloaded)."""


class KernelTimeout(KernelError):
    """A kernel tool did not answer in time; trying again would only wait again."""

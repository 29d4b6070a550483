"""What a PB client sees when a call fails: a L{pb.Error} subclass whose message starts with the shared error code.

PB copies an exception to the client as its class name and its message, so
the code travels in the message: ``"NOT_IN_ROOM: join \\"lobby\\" first"``.
Clients without this package read it with ``failure.getErrorMessage()``;
L{error_code} splits it off.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.spread import pb

from myservices.errors import ERRORS, ErrorCode, RequestError


class RequestFailed(pb.Error):
    """A PB call that could not be served. C{str()} is ``"CODE: detail"``."""

    def __init__(self, error: ErrorCode, detail: str | None = None) -> None:
        self.error = error
        self.detail = detail or error.message
        super().__init__(f"{error.code}: {self.detail}")

    @classmethod
    def from_request_error(cls, e: RequestError) -> RequestFailed:
        return cls(e.error, e.detail)


def error_code(error: Failure | pb.RemoteError) -> str | None:
    """The shared error code of a failed PB call, on the client side, or None if it is not one of ours.

    Takes the Failure of a callRemote Deferred, or the L{pb.RemoteError} that
    ``await`` raises for it.
    """
    if isinstance(error, pb.RemoteError):
        remote_type = error.remoteType
        message = str(error)
    else:
        if not error.check(RequestFailed):
            return None
        remote_type, message = _QUALNAME, error.getErrorMessage()
    if isinstance(remote_type, bytes):
        remote_type = remote_type.decode("utf-8", "replace")
    if remote_type != _QUALNAME:
        return None
    code = message.split(":", 1)[0]
    return code if code in ERRORS else None


_QUALNAME = f"{RequestFailed.__module__}.{RequestFailed.__qualname__}"

"""The errors of the drover package.

Every failure of a call is a DroverError, never a raw grpc exception. Its
``kind`` is serve's error kind when serve named one (the lower-case names
of drover.v1.ErrorKind without the prefix: "unknown_process",
"spawn_failed", ...), else None; ``code`` is the gRPC status code's name
("NOT_FOUND", "DEADLINE_EXCEEDED", ...) when the error came from a call.
The subclasses say what to do about it.
"""

import grpc

from ._pb import drover_pb2


class DroverError(Exception):
    """A drover call failed. ``str(e)`` says what and why."""

    def __init__(self, message, kind=None, code=None):
        super().__init__(message)
        self.kind = kind
        self.code = code


class NotFound(DroverError):
    """No such process (kind unknown_process) or node (unknown_node)."""


class AlreadyExists(DroverError):
    """The process name is in use (kind duplicate)."""


class InvalidArgument(DroverError):
    """The request is malformed (kind invalid)."""


class NodeLost(DroverError):
    """The node was lost; what ran there is gone (kind node_lost)."""


class Busy(DroverError):
    """Not enough free cores, or the hwthreads are reserved (kind busy)."""


class Unavailable(DroverError):
    """serve cannot be reached, or it or the node is shutting down (kind
    closed)."""


class DeadlineExceeded(DroverError):
    """The call's timeout passed before serve answered."""


class Cancelled(DroverError):
    """The call was cancelled (kind cancelled)."""


class SpawnError(DroverError):
    """The process could not be started (kind spawn_failed): ``errno`` is
    the error number of the failed fork/exec (compare with errno.ENOENT),
    ``path`` the file it concerns (the executable, work dir or output
    file); either may be None when serve did not say."""

    def __init__(self, message, kind=None, code=None, errno=None, path=None):
        super().__init__(message, kind, code)
        self.errno = errno
        self.path = path


_BY_KIND = {
    "unknown_process": NotFound,
    "unknown_node": NotFound,
    "duplicate": AlreadyExists,
    "invalid": InvalidArgument,
    "node_lost": NodeLost,
    "busy": Busy,
    "closed": Unavailable,
    "spawn_failed": SpawnError,
    "cancelled": Cancelled,
}

_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Busy,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}

# Trailers serve sets on typed errors (ASCII, so no status.proto needed).
KIND_TRAILER = "drover-error-kind"
ERRNO_TRAILER = "drover-errno"
PATH_TRAILER = "drover-path"


def make(message, kind=None, code=None, errno=None, path=None):
    """The error for a kind (preferred) or else a gRPC status code."""
    cls = _BY_KIND.get(kind) if kind else None
    if cls is None:
        cls = _BY_CODE.get(code, DroverError)
    name = code.name if isinstance(code, grpc.StatusCode) else code
    if cls is SpawnError:
        return SpawnError(message, kind, name, errno, path or None)
    return cls(message, kind or None, name)


def from_detail(message, detail):
    """The error of a drover.v1.ErrorDetail (a per-name poll error)."""
    kind = None
    if detail is not None and detail.kind:
        kind = _kind_name(detail.kind)
    errno = detail.errno if detail is not None and detail.errno else None
    path = detail.path if detail is not None else None
    return make(message, kind, None, errno, path)


def _kind_name(value):
    try:
        name = drover_pb2.ErrorKind.Name(value)
    except ValueError:
        return None
    return name[len("ERROR_KIND_"):].lower()


def from_rpc(err, what, context=""):
    """The DroverError of a failed call. ``what`` names the operation and
    its subject ("start sim on node1"); ``context`` is added to errors that
    serve did not explain (connection trouble, deadlines)."""
    if not isinstance(err, grpc.Call):
        return DroverError("%s: %s" % (what, err))
    code = err.code()
    details = err.details() or ""
    trailers = {}
    for key, value in err.trailing_metadata() or ():
        if isinstance(value, bytes):
            continue  # a -bin trailer; ours are ASCII
        trailers[key.lower()] = value
    kind = trailers.get(KIND_TRAILER) or None
    errno = None
    if ERRNO_TRAILER in trailers:
        try:
            errno = int(trailers[ERRNO_TRAILER])
        except ValueError:
            pass
    path = trailers.get(PATH_TRAILER)
    if kind is None:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            details = "%s: no answer within the timeout (deadline exceeded)" % what
        elif code == grpc.StatusCode.UNAVAILABLE:
            details = "%s: %s%s" % (what, details, context)
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            details = "%s: the credentials were refused: %s%s" % (what, details, context)
        elif code == grpc.StatusCode.CANCELLED:
            details = "%s: cancelled" % what
    return make(details or "%s: %s" % (what, code.name), kind, code, errno, path)

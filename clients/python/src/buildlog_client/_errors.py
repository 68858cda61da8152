"""BuildLogError, and reading it back from a gRPC status.

buildlog's errors carry a google.rpc.Status in the grpc-status-details-bin
trailer, with one google.rpc.ErrorInfo and, where they apply, a RetryInfo,
a BadRequest and a RequestInfo. They are read here with a small decoder of
the protobuf wire format, so that grpcio and protobuf are enough (no
grpcio-status or googleapis-common-protos) and no google.rpc type is
registered in protobuf's default descriptor pool, where it could clash with
the caller's own copy.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import grpc

__all__ = ["BuildLogError", "retryable", "PROTOCOL_ERROR", "CLIENT_DOMAIN"]

#: The reason of a BuildLogError raised because the server broke the
#: download contract (see BuildLogError.protocol_error).
PROTOCOL_ERROR = "PROTOCOL_ERROR"
#: The domain of errors the library finds itself (buildlog's own are
#: "buildlog").
CLIENT_DOMAIN = "buildlog_client"

_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"


class BuildLogError(Exception):
    """The one exception a buildlog download raises.

    It is raised for every ending that is not a complete log: an error the
    server returned (a gRPC status such as UNAUTHENTICATED or NOT_FOUND), a
    retryable ending after the retry budget was spent, the caller's own
    timeout or cancel, and a stream that broke the download contract
    (:attr:`protocol_error`). A download never ends quietly with a short
    log.

    Attributes:
        code: The gRPC status code, a :class:`grpc.StatusCode`. A protocol
            error is ``DATA_LOSS``.
        message: The status message (the server's ``details``).
        reason: The google.rpc.ErrorInfo reason, such as
            ``"UPSTREAM_NOT_FOUND"`` or ``"INVALID_TOKEN"``; ``""`` when the
            error carried none (a connection that failed, for instance).
        domain: The ErrorInfo domain: ``"buildlog"`` for the server's
            errors, ``"buildlog_client"`` for the library's own.
        metadata: The ErrorInfo metadata, such as ``httpStatus``,
            ``upstreamErrorCode``, ``requestId``, ``resumeOffset``,
            ``logSize``.
        retry_delay: The google.rpc.RetryInfo delay in seconds, or None.
        violations: The google.rpc.BadRequest field violations, as
            ``(field, description)`` pairs.
        request_id: The upstream's request id (google.rpc.RequestInfo or
            the ``requestId`` metadata), for support requests; ``""`` when
            unknown.
        offset: Where the bytes the download delivered end, as a log
            offset (the request's offset plus the bytes delivered); None
            when the error was not raised by a download.
        calls: How many DownloadTaskLog calls the download made; 0 when the
            error was not raised by a download.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: Dict[str, str]
    retry_delay: Optional[float]
    violations: List[Tuple[str, str]]
    request_id: str
    offset: Optional[int]
    calls: int

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Optional[Mapping[str, str]] = None,
        retry_delay: Optional[float] = None,
        violations: Optional[List[Tuple[str, str]]] = None,
        request_id: str = "",
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay
        self.violations = list(violations or [])
        self.request_id = request_id or self.metadata.get("requestId", "")
        self.offset = None
        self.calls = 0

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "BuildLogError":
        """The BuildLogError of a :class:`grpc.RpcError` (a failed call),
        with the details of its google.rpc.Status trailer."""
        code = _call_attr(err, "code")
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        message = _call_attr(err, "details")
        if not isinstance(message, str):
            message = ""
        trailers: Any = _call_attr(err, "trailing_metadata") or ()
        details = b""
        for key, value in trailers:
            if key == _DETAILS_KEY and isinstance(value, bytes):
                details = value
        kw: Dict[str, Any] = {}
        if details:
            try:
                kw = _status_details(details)
            except (IndexError, UnicodeDecodeError, ValueError):
                kw = {}  # undecodable details: the code and message remain
        e = cls(code, message, **kw)
        e.__cause__ = err if isinstance(err, BaseException) else None
        return e

    @classmethod
    def protocol(cls, message: str) -> "BuildLogError":
        """A protocol error: the server broke the download contract."""
        return cls(grpc.StatusCode.DATA_LOSS, message, reason=PROTOCOL_ERROR, domain=CLIENT_DOMAIN)

    @property
    def code_name(self) -> str:
        """The code's name, such as ``"NOT_FOUND"``."""
        return str(self.code.name)

    @property
    def protocol_error(self) -> bool:
        """Whether the server broke the download contract (a gap or overlap
        in the offsets, data past the range, a resumeOffset past the bytes
        received, an OK ending before the range or the followed action was
        complete). The bytes delivered before it are a correct prefix of
        the log; it is not retried."""
        return self.reason == PROTOCOL_ERROR and self.domain == CLIENT_DOMAIN

    @property
    def resume_offset(self) -> Optional[int]:
        """The ErrorInfo ``resumeOffset``: where to call again from after a
        failure mid-stream; None when the error carried none."""
        v = self.metadata.get("resumeOffset")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    @property
    def retryable(self) -> bool:
        """See :func:`retryable`."""
        return retryable(self)

    def __str__(self) -> str:
        s = f"{self.code.name}: {self.message}"
        extra = []
        if self.reason:
            extra.append(self.reason)
        for key in ("httpStatus", "upstreamErrorCode", "resumeOffset", "logSize"):
            if key in self.metadata:
                extra.append(f"{key}={self.metadata[key]}")
        if self.request_id:
            extra.append(f"requestId={self.request_id}")
        if self.retry_delay is not None:
            extra.append(f"retry in {self.retry_delay:g}s")
        for field, desc in self.violations:
            extra.append(f"{field}: {desc}")
        return s + (f" ({', '.join(extra)})" if extra else "")

    def __repr__(self) -> str:
        return (f"BuildLogError(code={self.code.name}, reason={self.reason!r}, "
                f"message={self.message!r}, metadata={self.metadata!r})")


def retryable(err: BaseException) -> bool:
    """Whether a download that ended with err may go on with another call,
    as the Go client's Retryable says: UNAVAILABLE (the server or its
    upstream unreachable or interrupted, a server shutting down or
    restarting, a connection closing), DEADLINE_EXCEEDED for the server's
    follow time limit (reason FOLLOW_TIME_LIMIT), and RESOURCE_EXHAUSTED
    with a retry delay (RetryInfo). Every other ending is final:
    UNAUTHENTICATED, NOT_FOUND, OUT_OF_RANGE, ABORTED (LOG_CHANGED: download
    again from the start), a protocol error, the caller's own timeout or
    cancel."""
    if isinstance(err, grpc.RpcError) and not isinstance(err, BuildLogError):
        err = BuildLogError.from_rpc_error(err)
    if not isinstance(err, BuildLogError):
        return False
    if err.code == grpc.StatusCode.UNAVAILABLE:
        return True
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return err.reason == "FOLLOW_TIME_LIMIT"
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return bool(err.retry_delay and err.retry_delay > 0)
    return False


def _call_attr(err: object, name: str) -> object:
    f = getattr(err, name, None)
    if f is None:
        return None
    try:
        return f()
    except Exception:  # a call object that has no such value
        return None


def _status_details(buf: bytes) -> Dict[str, Any]:
    """The keyword arguments of BuildLogError from a google.rpc.Status."""
    kw: Dict[str, Any] = {}
    for num, value in _fields(buf):
        if num != 3 or not isinstance(value, bytes):  # Status.details (Any)
            continue
        any_fields = dict(_fields(value))
        type_url = any_fields.get(1, b"")
        body = any_fields.get(2, b"")
        if not isinstance(type_url, bytes) or not isinstance(body, bytes):
            continue
        name = type_url.decode("utf-8").rsplit("/", 1)[-1]
        if name == "google.rpc.ErrorInfo":
            md: Dict[str, str] = {}
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    kw["reason"] = v.decode("utf-8")
                elif n == 2 and isinstance(v, bytes):
                    kw["domain"] = v.decode("utf-8")
                elif n == 3 and isinstance(v, bytes):  # map entry: key 1, value 2
                    entry = dict(_fields(v))
                    md[_text(entry.get(1))] = _text(entry.get(2))
            kw["metadata"] = md
        elif name == "google.rpc.RetryInfo":
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):  # google.protobuf.Duration
                    d = dict(_fields(v))
                    secs, nanos = d.get(1, 0), d.get(2, 0)
                    kw["retry_delay"] = (secs if isinstance(secs, int) else 0) + \
                        (nanos if isinstance(nanos, int) else 0) / 1e9
        elif name == "google.rpc.BadRequest":
            violations = []
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    fv = dict(_fields(v))
                    violations.append((_text(fv.get(1)), _text(fv.get(2))))
            kw["violations"] = violations
        elif name == "google.rpc.RequestInfo":
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    kw["request_id"] = v.decode("utf-8")
    return kw


def _text(v: object) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else ""


def _fields(buf: bytes) -> Iterator[Tuple[int, Union[int, bytes]]]:
    """Yields (field number, value) of a protobuf message: an int for
    varints, bytes for length-delimited fields; fixed-width ones are
    skipped. Raises IndexError or ValueError on malformed input."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield key >> 3, v
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("truncated field")
            yield key >> 3, bytes(buf[i:i + length])
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")

"""Client and LogStream: buildlog downloads that resume by themselves.

The semantics are those of the Go client package (client/follow.go): which
endings are retried and from where, the retry budget and its backoff, the
checks of every message's offset and of the range's length.
"""

from __future__ import annotations

import enum
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from types import TracebackType
from typing import (IO, Any, Callable, Generator, Iterator, List, Optional,
                    Sequence, Tuple, Type, Union)

import grpc

from buildlog.v1 import buildlog_pb2 as _buildlog_pb2

from ._errors import CLIENT_DOMAIN, BuildLogError

__all__ = [
    "Client", "LogStream", "LogLevel", "LogMetadata", "ActionState", "Reconnect",
    "log_key", "DEFAULT_MAX_RETRIES", "DEFAULT_MIN_BACKOFF", "DEFAULT_MAX_BACKOFF",
    "TOKEN_METADATA_KEY", "LOG_KEY_METADATA_KEY",
]

#: How many calls in a row may end without progress before a download
#: gives up (the Go client's DefaultMaxRetries).
DEFAULT_MAX_RETRIES = 10
#: The pause before the first reconnect after a failed call, in seconds;
#: each further failure in a row doubles it, up to DEFAULT_MAX_BACKOFF.
#: Pauses are jittered by up to half.
DEFAULT_MIN_BACKOFF = 0.1
DEFAULT_MAX_BACKOFF = 5.0

#: The request metadata key of the caller's IAM token.
TOKEN_METADATA_KEY = "x-auth-token"
#: The request metadata key of the log's routing key (see :func:`log_key`).
LOG_KEY_METADATA_KEY = "buildlog-log-key"

_METHOD = "/buildlog.v1.BuildLogService/DownloadTaskLog"

# The generated module builds its classes at run time: Any to type checkers.
buildlog_pb2: Any = _buildlog_pb2

# Channel arguments of a channel the Client makes: grpc's reconnect backoff
# (1 s growing to 120 s by default) shortened to 0.1 s growing to 5 s, as
# the buildlog CLI does, so that a follow rides out a buildlogd restart
# within its retry budget (about 25 s).
#
# And grpc's SingleThreadedUnaryStream: a server-streaming call is read on
# the thread that iterates it, with no extra thread handing each message
# over (bench.py: about 30% more throughput than grpc's default; the option
# is experimental, so it is set only where this grpcio has it).
_DEFAULT_CHANNEL_OPTIONS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
try:
    import grpc.experimental as _grpc_experimental
    _SINGLE_THREADED: Optional[str] = getattr(
        getattr(_grpc_experimental, "ChannelOptions", None), "SingleThreadedUnaryStream", None)
except ImportError:  # a grpcio without it
    _SINGLE_THREADED = None
if _SINGLE_THREADED is not None:
    _DEFAULT_CHANNEL_OPTIONS += ((_SINGLE_THREADED, 1),)


class LogLevel(enum.IntEnum):
    """A log's detail level (the proto's buildlog.v1.LogLevel)."""

    #: The upstream default, which is INFO.
    UNSPECIFIED = 0
    #: The normal build log.
    INFO = 1
    #: The detailed build log.
    DEBUG = 2


#: What ``level=`` accepts: None (the default level), a LogLevel or its
#: value, or a name: ``"info"``, ``"debug"``, ``"LOG_LEVEL_DEBUG"`` (any case).
LogLevelLike = Union[None, int, str, LogLevel]


def _level(level: LogLevelLike) -> LogLevel:
    if level is None:
        return LogLevel.UNSPECIFIED
    if isinstance(level, str):
        name = level.upper()
        if name.startswith("LOG_LEVEL_"):
            name = name[len("LOG_LEVEL_"):]
        try:
            return LogLevel[name]
        except KeyError:
            raise ValueError(f"unknown log level {level!r}: use 'info' or 'debug'") from None
    return LogLevel(int(level))


def log_key(record_id: str, task_name: str, level: LogLevelLike = None) -> str:
    """The routing key of a log, as the Go api.LogKey makes it:
    ``record/task/INFO`` or ``.../DEBUG``, query-escaped. Sent in the
    ``buildlog-log-key`` metadata of every call, so that a proxy can route
    every call for one log to one replica."""
    quote = urllib.parse.quote_plus
    lvl = "DEBUG" if _level(level) == LogLevel.DEBUG else "INFO"
    return f"{quote(record_id)}/{quote(task_name)}/{lvl}"


@dataclass(frozen=True)
class LogMetadata:
    """The log's metadata, from the first message of a call."""

    #: The media type the upstream gave, else "application/octet-stream".
    content_type: str
    #: A plain file name for the log, such as "<record_id>-<task_name>.log".
    file_name: str
    #: The size of the whole log in bytes; None when the upstream did not
    #: say, and on a followed stream of an action still running.
    total_size: Optional[int]
    #: The upstream's request id, for support requests; "" when unknown.
    request_id: str


@dataclass(frozen=True)
class ActionState:
    """A followed log's build action, as the upstream reports it."""

    #: Whether the action has finished (its log will not grow).
    finished: bool
    #: The upstream's status word, such as "running", "success", "failed".
    status: str
    #: The upstream's finish time, as it wrote it; "" while running.
    finish_time: str


@dataclass(frozen=True)
class Reconnect:
    """A reconnect about to happen, passed to ``on_reconnect``."""

    #: How the last call ended.
    error: BuildLogError
    #: The log offset the next call asks for.
    offset: int
    #: The pause before the next call, in seconds.
    delay: float
    #: The calls in a row that ended without progress, the last one
    #: included; 0 when the last call made progress.
    failures: int


class Client:
    """A connection to a buildlogd, for downloading build action logs.

    ::

        with Client("localhost:9090", token) as client:
            with open("stage1.log", "wb") as f:
                client.download(record_id, "stage1").write_to(f)

    Args:
        address: buildlogd's gRPC address, ``HOST:PORT`` (any gRPC target).
            Not needed with ``channel``.
        token: The caller's IAM token, sent as ``x-auth-token`` metadata on
            every call. May be omitted when buildlogd holds credentials of
            its own and the caller authenticates otherwise (``bearer``, a
            client certificate).
        bearer: A bearer token for a buildlogd holding credentials of its
            own, sent as ``authorization: Bearer ...``.
        tls: Connect over TLS, verifying the server with the system roots.
            Default: plaintext, unless ``credentials`` are given.
        credentials: The channel credentials to connect with, such as
            ``grpc.ssl_channel_credentials(root_certificates=ca_pem)``, with
            ``private_key`` and ``certificate_chain`` for mTLS.
        channel: A grpc.Channel to use instead of making one; the Client
            does not close it. ``address``, ``tls``, ``credentials`` and
            ``options`` are then ignored.
        options: Extra grpc channel arguments, as ``(key, value)`` pairs.
            By default the channel's reconnect backoff grows from 0.1 s to at
            most 5 s (grpc's default grows to 120 s), and streams are read
            on the iterating thread (grpc's experimental
            SingleThreadedUnaryStream, where grpcio has it; pass
            ``(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 0)``
            to turn it off).
        metadata: Extra request metadata sent on every call.
        max_retries: How many calls in a row may end without progress before
            a download gives up; 0 turns reconnecting off.
        min_backoff: The pause before the first reconnect after a failed
            call, in seconds, doubled for each further failure in a row;
            also the pause before a reconnect after a followed call that
            the server ended regularly with no new bytes.
        max_backoff: The longest pause, in seconds.

    A Client may be shared by threads; each download (a :class:`LogStream`)
    belongs to the thread that iterates it.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        token: Optional[str] = None,
        *,
        bearer: Optional[str] = None,
        tls: bool = False,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel: Optional[grpc.Channel] = None,
        options: Sequence[Tuple[str, Any]] = (),
        metadata: Sequence[Tuple[str, str]] = (),
        max_retries: int = DEFAULT_MAX_RETRIES,
        min_backoff: float = DEFAULT_MIN_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> None:
        if channel is not None:
            self._channel, self._owns_channel = channel, False
        else:
            if not address:
                raise ValueError("Client needs an address (HOST:PORT) or a channel")
            opts = list(_DEFAULT_CHANNEL_OPTIONS)
            given = {k for k, _ in options}
            opts = [o for o in opts if o[0] not in given] + list(options)
            if credentials is None and tls:
                credentials = grpc.ssl_channel_credentials()
            if credentials is not None:
                self._channel = grpc.secure_channel(address, credentials, options=opts)
            else:
                self._channel = grpc.insecure_channel(address, options=opts)
            self._owns_channel = True
        self.address = address
        self._token = token
        self._bearer = bearer
        self._metadata = tuple(metadata)
        self.max_retries = max(int(max_retries), 0)
        self.min_backoff = max(float(min_backoff), 0.0)
        self.max_backoff = max(float(max_backoff), self.min_backoff)
        self._closed = False
        self._download = self._channel.unary_stream(
            _METHOD,
            request_serializer=buildlog_pb2.DownloadTaskLogRequest.SerializeToString,
            response_deserializer=buildlog_pb2.DownloadTaskLogResponse.FromString,
        )

    @property
    def channel(self) -> grpc.Channel:
        """The grpc.Channel, for calls of one's own, such as through the
        generated stub: ``buildlog.v1.buildlog_pb2_grpc.BuildLogServiceStub(client.channel)``."""
        return self._channel

    def close(self) -> None:
        """Closes the channel, if the Client made it. Downloads still
        running end with CANCELLED, also those pausing before a reconnect
        (when the pause is over)."""
        if self._owns_channel:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def download(
        self,
        record_id: str,
        task_name: str,
        *,
        level: LogLevelLike = None,
        offset: int = 0,
        limit: int = 0,
        follow: bool = False,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        on_reconnect: Optional[Callable[[Reconnect], None]] = None,
        on_action: Optional[Callable[[ActionState], None]] = None,
    ) -> "LogStream":
        """Downloads a build action's log, as an iterator of ``bytes``.

        Nothing is sent until the stream is iterated or its metadata is
        read. The concatenated chunks are the requested range of the log,
        byte for byte: iteration ends normally only once the whole range
        arrived; every other ending raises :class:`BuildLogError`. An
        exception from a callback (``on_reconnect``, ``on_action``) ends
        the download: it is raised to the iterating thread, and every later
        read raises a BuildLogError saying the download failed.

        After an ending that :func:`retryable` accepts (the server or the
        upstream unavailable or interrupted, a restart, the server's follow
        time limit, throttling with a retry delay) the stream calls again
        for the rest, from the error's ``resumeOffset`` (bytes received
        twice are skipped) or else from the bytes received, pausing with
        backoff after calls that brought nothing new, and gives up after
        ``max_retries`` such calls in a row.

        Args:
            record_id: The build record id, 36 characters of [0-9a-z-].
            task_name: The build action, such as ``"stage1"``.
            level: The log's detail level: None (INFO), "info", "debug"
                or a :class:`LogLevel`.
            offset: The log offset to start at.
            limit: At most this many bytes; 0 for all up to the log's end.
            follow: Follow the log while its action runs, as ``tail -f``
                does, until the action finished (see :meth:`follow`).
            token: This download's token instead of the Client's.
            timeout: A deadline for the whole download, in seconds,
                reconnects included; passing it ends the download with
                DEADLINE_EXCEEDED.
            max_retries: This download's retry budget instead of the
                Client's.
            on_reconnect: Called with a :class:`Reconnect` before each
                reconnect, such as to tell a user.
            on_action: Called with each new state of a followed action.

        Returns:
            A :class:`LogStream`: iterate it for the chunks; its
            ``metadata``, ``total_size``, ``file_name``, ``content_type``
            and ``action`` tell what the server said of the log.
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative, got {offset} and {limit}")
        md: List[Tuple[str, str]] = []
        tok = self._token if token is None else token
        if tok:
            md.append((TOKEN_METADATA_KEY, tok))
        if self._bearer:
            md.append(("authorization", "Bearer " + self._bearer))
        md.extend(self._metadata)
        md.append((LOG_KEY_METADATA_KEY, log_key(record_id, task_name, level)))
        return LogStream(
            self._channel, self._download, record_id, task_name, _level(level), offset, limit, follow,
            tuple(md), timeout,
            self.max_retries if max_retries is None else max(int(max_retries), 0),
            self.min_backoff, self.max_backoff, on_reconnect, on_action,
            client_closed=lambda: self._closed)

    def follow(self, record_id: str, task_name: str, **kwargs: Any) -> "LogStream":
        """Follows a build action's log while the action runs, as
        ``tail -f`` does: :meth:`download` with ``follow=True``.

        The stream delivers what the action has logged so far, then each new
        part as it is written, reconnecting by itself when the server ends
        the call early (its follow time limit, a restart or shutdown, an
        upstream failure, the server down for a moment), and ends once the
        action finished and its whole log was delivered; ``stream.action``
        is then the final state. With ``limit`` it ends after that many
        bytes. Takes the keyword arguments of :meth:`download`.
        """
        kwargs["follow"] = True
        return self.download(record_id, task_name, **kwargs)


class LogStream(Iterator[bytes]):
    """One download: an iterator of the log's bytes, chunk by chunk.

    Iterating it makes the DownloadTaskLog calls; it ends normally only once
    the whole range was delivered and raises :class:`BuildLogError`
    otherwise (or the exception a callback raised). Once it raised, every
    later read raises again: a failed download never ends normally. Reading
    :attr:`metadata` (or ``total_size``, ``file_name``, ``content_type``,
    ``request_id``) before iterating waits for the first message. Use it as
    a context manager, or call :meth:`close`, to end a download early.
    """

    def __init__(self, channel: Optional[grpc.Channel], method: Any, record_id: str, task_name: str, level: LogLevel,
                 offset: int, limit: int, follow: bool, metadata: Tuple[Tuple[str, str], ...],
                 timeout: Optional[float], max_retries: int, min_backoff: float,
                 max_backoff: float, on_reconnect: Optional[Callable[[Reconnect], None]],
                 on_action: Optional[Callable[[ActionState], None]], *,
                 client_closed: Optional[Callable[[], bool]] = None) -> None:
        self._channel = channel
        self._client_closed = client_closed
        self._method = method
        self.record_id = record_id
        self.task_name = task_name
        self.level = level
        #: The log offset the download starts at.
        self.offset = offset
        self.limit = limit
        self.follow = follow
        self._md = metadata
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._max_retries = max_retries
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._on_reconnect, self._on_action = on_reconnect, on_action
        self._end = offset + limit if limit > 0 else -1
        self._pos = offset
        self._calls = 0
        self._metadata: Optional[LogMetadata] = None
        # The log's size as a call's metadata last gave it, across calls: a
        # resumed call that says nothing of it (or ends early) is still held
        # to it. None while no call gave it (a follow of a running action).
        self._total: Optional[int] = None
        self._action: Optional[ActionState] = None
        self._call: Any = None
        self._cancelled = threading.Event()
        self._gen = self._run()
        self._started = False
        self._pending: Optional[bytes] = None
        self._error: Optional[BuildLogError] = None
        # An exception other than a BuildLogError that ended the download
        # (a callback's, say): later reads raise a BuildLogError for it.
        self._failure: Optional[BaseException] = None
        self._done = False
        self._closed = False

    # --- what the server said ---

    @property
    def metadata(self) -> Optional[LogMetadata]:
        """The log's metadata, as the last call that got a message gave it.
        Read before iterating, it waits for the first message (and raises
        the download's error if there is none)."""
        self._prime()
        return self._metadata

    @property
    def total_size(self) -> Optional[int]:
        """The whole log's size in bytes; None when unknown (see
        :attr:`LogMetadata.total_size`)."""
        md = self.metadata
        return md.total_size if md else None

    @property
    def content_type(self) -> str:
        """The log's media type."""
        md = self.metadata
        return md.content_type if md else ""

    @property
    def file_name(self) -> str:
        """A plain file name for the log."""
        md = self.metadata
        return md.file_name if md else ""

    @property
    def request_id(self) -> str:
        """The upstream's request id of the last call."""
        md = self.metadata
        return md.request_id if md else ""

    @property
    def action(self) -> Optional[ActionState]:
        """The followed action's last reported state; None without follow.
        Once a follow ended normally it is finished (unless ``limit`` was
        reached first)."""
        return self._action

    @property
    def written(self) -> int:
        """The number of bytes delivered so far."""
        return self._pos - self.offset

    @property
    def position(self) -> int:
        """The log offset where the bytes delivered end."""
        return self._pos

    @property
    def calls(self) -> int:
        """How many DownloadTaskLog calls were made: 1 plus the reconnects."""
        return self._calls

    @property
    def done(self) -> bool:
        """Whether the whole range was delivered."""
        return self._done

    # --- iteration ---

    def __iter__(self) -> "LogStream":
        return self

    def __next__(self) -> bytes:
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        while True:
            chunk = self._step()
            if chunk:
                return chunk

    def _step(self) -> bytes:
        """The next message's new bytes (maybe none); StopIteration once
        complete."""
        if self._error is not None:
            raise self._error
        if self._failure is not None:
            raise self._failed_error() from self._failure
        if self._closed:
            raise ValueError("the download was closed")
        self._started = True
        try:
            return next(self._gen)
        except StopIteration:
            self._done = True
            raise
        except BuildLogError as e:
            e.offset, e.calls = self._pos, self._calls
            self._error = e
            raise
        except BaseException as e:
            # The generator is finished: were the stream iterated again, its
            # StopIteration would pass for a complete range.
            self._failure = e
            raise

    def _failed_error(self) -> BuildLogError:
        e = BuildLogError(grpc.StatusCode.UNKNOWN,
                          f"the download failed earlier, at offset {self._pos}: {self._failure!r}",
                          reason="DOWNLOAD_FAILED", domain=CLIENT_DOMAIN)
        e.offset, e.calls = self._pos, self._calls
        return e

    def _prime(self) -> None:
        if self._started or self._closed:
            return
        try:
            chunk = self._step()
        except StopIteration:
            return
        if chunk:
            self._pending = chunk

    def read(self) -> bytes:
        """The rest of the range, as one bytes object."""
        return b"".join(self)

    def write_to(self, f: IO[bytes]) -> int:
        """Writes the rest of the range to the binary file f, chunk by
        chunk; returns the number of bytes written. After an error f holds
        a correct prefix of the range (``error.offset`` says where it
        ends)."""
        n = 0
        for chunk in self:
            f.write(chunk)
            n += len(chunk)
        return n

    def cancel(self) -> None:
        """Cancels the download from any thread: the iterating thread gets
        a BuildLogError with code CANCELLED."""
        self._cancelled.set()
        call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Ends the download, cancelling its call; iterating it after that
        raises ValueError."""
        if not self._closed:
            self._closed = True
            self._gen.close()

    def __enter__(self) -> "LogStream":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # --- the calls ---

    def _run(self) -> Generator[bytes, None, None]:
        start, failures = self.offset, 0
        while True:
            before = self._pos
            progress, err = yield from self._one_call(start)
            if err is None:
                return
            if self._cancelled.is_set():
                raise _cancelled_error()
            if not err.retryable or self._max_retries == 0:
                raise err
            if self._pos == self._end:
                return  # the call failed after the range's last byte
            start = self._resume_offset(err)
            failures = 0 if progress else failures + 1
            if failures > self._max_retries:
                raise err
            delay = self._backoff(failures, err)
            if progress and self._pos == before:
                # A followed call the server ended regularly with no new
                # bytes: progress, yet a server ending calls at once must
                # not make a tight loop.
                delay = max(delay, self._min_backoff)
            if self._deadline is not None and time.monotonic() + delay >= self._deadline:
                raise BuildLogError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"the download's deadline passed; the last call ended with {err}",
                                    reason="DEADLINE_EXCEEDED", domain=CLIENT_DOMAIN)
            if self._on_reconnect is not None:
                self._on_reconnect(Reconnect(err, start, delay, failures))
            if self._is_client_closed():
                raise self._closed_error()
            if delay > 0 and self._pause(delay):
                raise _cancelled_error()

    def _one_call(self, start: int) -> Generator[bytes, None, Tuple[bool, Optional[BuildLogError]]]:
        """Makes one call from the log offset start (at most the bytes
        delivered) and yields its bytes past them. Returns whether it made
        progress, and None once the range is complete, else its error."""
        end = self._end
        req = buildlog_pb2.DownloadTaskLogRequest(
            record_id=self.record_id, task_name=self.task_name, log_level=int(self.level),
            offset=start, limit=end - start if end >= 0 else 0, follow=self.follow)
        timeout = None
        if self._deadline is not None:
            timeout = max(self._deadline - time.monotonic(), 0.0)
        try:
            call = self._method(req, metadata=self._md, timeout=timeout)
        except ValueError as e:
            # grpc refuses a call on a closed channel with a ValueError.
            if not self._is_client_closed() and "closed channel" not in str(e):
                raise
            raise self._closed_error() from e
        self._calls += 1
        self._call = call
        if self._cancelled.is_set():
            call.cancel()
        before = self._pos
        nxt = start
        received = finished = False
        try:
            try:
                for msg in call:
                    received = True
                    if msg.HasField("metadata"):
                        m = msg.metadata
                        total = m.total_size if m.HasField("total_size") else None
                        if total is not None:
                            if self._total is not None and total != self._total:
                                raise BuildLogError.protocol(
                                    f"the log was {self._total} bytes long and a resumed call says {total}")
                            self._total = total
                        self._metadata = LogMetadata(m.content_type, m.file_name, total, m.request_id)
                    if msg.HasField("action"):
                        a = msg.action
                        finished = a.finished
                        self._set_action(ActionState(a.finished, a.status, a.finish_time))
                    data, at = msg.data, msg.offset
                    if at != nxt:
                        raise BuildLogError.protocol(
                            f"a message at offset {at} where {nxt} was expected")
                    nxt += len(data)
                    if end >= 0 and nxt > end:
                        raise BuildLogError.protocol(
                            f"a message of {len(data)} bytes at offset {at}, past the range's end at {end}")
                    if self._total is not None and nxt > self._total:
                        raise BuildLogError.protocol(
                            f"a message of {len(data)} bytes at offset {at}, past the log's end at {self._total}")
                    skip = self._pos - at
                    if skip > 0:
                        data = data[skip:]  # received before
                    self._pos += len(data)
                    yield data
            except grpc.RpcError as rpc_err:
                err = BuildLogError.from_rpc_error(rpc_err)
                return self._pos > before or (received and _follow_ended(err)), err
        finally:
            self._call = None
            call.cancel()  # a call abandoned early is cancelled, not left open
        progress = self._pos > before
        if not received:
            raise BuildLogError.protocol(
                f"the stream ended OK at offset {self._pos} without a message "
                "(the first one carries the log's metadata)")
        if self._pos == end:
            return progress, None
        if self._total is not None:
            want = min(self._total, end) if end >= 0 else self._total
            if self._pos != want:
                raise BuildLogError.protocol(
                    f"the stream ended OK at offset {self._pos}, the range ends at {want}")
        if self.follow and not finished:
            raise BuildLogError.protocol(
                f"the followed stream ended OK at offset {self._pos} before the action finished")
        return progress, None

    def _pause(self, delay: float) -> bool:
        """Waits delay seconds, or until cancel(); reports whether it was
        cancelled. The channel is watched meanwhile: grpc Python runs a
        channel's reconnect timers only while something polls the channel,
        and a call made on a channel in TRANSIENT_FAILURE fails at once
        without dialling, so without a watcher a channel whose server went
        away dials again many seconds after the server is back (measured:
        about 12 s after a 0.7 s restart, against 0.5 s with the watch).
        try_to_connect stays False: grpc 1.51 keeps polling a closed
        channel (and a thread fails) when it is set as the channel closes.
        """
        def watch(_: grpc.ChannelConnectivity) -> None:
            pass
        subscribed = False
        # Not on a closed channel: its polling thread would fail.
        if self._channel is not None and not self._is_client_closed():
            try:
                self._channel.subscribe(watch, try_to_connect=False)
                subscribed = True
            except Exception:  # a channel that cannot be watched: just wait
                pass
        try:
            return self._cancelled.wait(delay)
        finally:
            if subscribed:
                try:
                    self._channel.unsubscribe(watch)
                except Exception:  # the channel was closed meanwhile
                    pass

    def _is_client_closed(self) -> bool:
        return self._client_closed is not None and self._client_closed()

    def _closed_error(self) -> BuildLogError:
        what = "the client was closed" if self._is_client_closed() else "the channel was closed"
        return BuildLogError(grpc.StatusCode.CANCELLED,
                             f"{what}: no further call can be made, at offset {self._pos}",
                             reason="CLIENT_CLOSED", domain=CLIENT_DOMAIN)

    def _set_action(self, a: ActionState) -> None:
        if a == self._action:
            return
        self._action = a
        if self._on_action is not None:
            self._on_action(a)

    def _resume_offset(self, err: BuildLogError) -> int:
        s = err.metadata.get("resumeOffset")
        if s is None:
            return self._pos
        try:
            r = int(s)
        except ValueError:
            r = -1
        if r < 0 or r > self._pos:
            raise BuildLogError.protocol(
                f"resumeOffset {s!r} after {self._pos} bytes received ({err})")
        return r

    def _backoff(self, failures: int, err: BuildLogError) -> float:
        d = 0.0
        if failures > 0:
            d = min(self._min_backoff * 2 ** min(failures - 1, 32), self._max_backoff)
            d = d / 2 + random.uniform(0, d / 2)
        if err.retry_delay:
            d = max(d, err.retry_delay)
        return d


def _follow_ended(err: BuildLogError) -> bool:
    """Whether the server ended a followed call as it does regularly: at its
    follow time limit, or as it shuts down or the connection reached its
    maximum age."""
    return err.reason in ("FOLLOW_TIME_LIMIT", "FOLLOW_INTERRUPTED")


def _cancelled_error() -> BuildLogError:
    return BuildLogError(grpc.StatusCode.CANCELLED, "the download was cancelled",
                         reason="CANCELED", domain=CLIENT_DOMAIN)

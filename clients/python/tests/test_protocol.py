"""The download contract's checks, against a scripted gRPC server.

buildlogd keeps the contract, so the test bed cannot show what the library
does when a server breaks it. As the Go client's TestDownloadScripted does,
these tests run a real gRPC server (grpcio, in this process) whose
DownloadTaskLog answers each call with the next scripted step: messages,
then an ending with a google.rpc.Status like buildlogd's.
"""

import threading
import time
from concurrent import futures

import grpc
import pytest

from buildlog.v1 import buildlog_pb2, buildlog_pb2_grpc
from buildlog_client import BuildLogError, Client

TEXT = bytes(range(256)) * 4


def _varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num, b):
    return _varint(num << 3 | 2) + _varint(len(b)) + b


def _vi(num, v):
    return _varint(num << 3) + _varint(v)


def status_details(code, message, reason, metadata=None, retry_delay=None):
    """A google.rpc.Status with an ErrorInfo (and a RetryInfo), encoded."""
    info = _ld(1, reason.encode()) + _ld(2, b"buildlog")
    for k, v in (metadata or {}).items():
        info += _ld(3, _ld(1, k.encode()) + _ld(2, v.encode()))
    details = _ld(3, _ld(1, b"type.googleapis.com/google.rpc.ErrorInfo") + _ld(2, info))
    if retry_delay is not None:
        secs, nanos = int(retry_delay), int(round((retry_delay % 1) * 1e9))
        duration = (_vi(1, secs) if secs else b"") + (_vi(2, nanos) if nanos else b"")
        details += _ld(3, _ld(1, b"type.googleapis.com/google.rpc.RetryInfo") + _ld(2, _ld(1, duration)))
    return _vi(1, code.value[0]) + _ld(2, message.encode()) + details


def chunk(start, end, total=None):
    m = buildlog_pb2.DownloadTaskLogResponse(data=TEXT[start:end], offset=start)
    if total is not None:
        m.metadata.total_size = total
    return m


def ended(code, reason="", resume=None, retry_delay=None):
    md = {} if resume is None else {"resumeOffset": str(resume)}
    return (code, reason, md, retry_delay)


FINISHED = buildlog_pb2.ActionState(finished=True, status="success")


class Scripted(buildlog_pb2_grpc.BuildLogServiceServicer):
    def __init__(self, steps):
        self.steps = list(steps)
        self.requests = []
        self.lock = threading.Lock()

    def DownloadTaskLog(self, request, context):
        with self.lock:
            self.requests.append(request)
            i = len(self.requests) - 1
            msgs, end = self.steps[min(i, len(self.steps) - 1)]
        for m in msgs:
            yield m
        if end is not None:
            code, reason, md, delay = end
            if reason:
                context.set_trailing_metadata([("grpc-status-details-bin",
                                                status_details(code, "scripted", reason, md, delay))])
            context.set_code(code)
            context.set_details("scripted")


@pytest.fixture
def scripted():
    servers = []

    def start(*steps):
        s = Scripted(steps)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        buildlog_pb2_grpc.add_BuildLogServiceServicer_to_server(s, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        client = Client(f"127.0.0.1:{port}", "t", min_backoff=0.001, max_backoff=0.002)
        servers.append(client)
        return s, client

    yield start
    for s in servers:
        if isinstance(s, Client):
            s.close()
        else:
            s.stop(None)


U, D, R = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED

CASES = [
    # name, request kwargs, steps, want bytes, want code (None: OK; "proto": protocol error), want (offset, limit) of each call
    ("a lower resumeOffset: the bytes received again are skipped", {},
     [([chunk(0, 100, 300)], ended(U, "CALLER_IDLE", 60)), ([chunk(60, 80, 300), chunk(80, 300)], None)],
     TEXT[:300], None, [(0, 0), (60, 0)]),
    ("no details: resumed from the bytes received, with the remaining limit", {"offset": 10, "limit": 200},
     [([chunk(10, 50)], ended(U)), ([chunk(50, 210)], None)],
     TEXT[10:210], None, [(10, 200), (50, 160)]),
    ("a failure after the range's last byte completes it", {"limit": 100},
     [([chunk(0, 100)], ended(U, "UPSTREAM_INTERRUPTED", 100))],
     TEXT[:100], None, [(0, 100)]),
    ("a resumeOffset past the bytes received", {},
     [([chunk(0, 100)], ended(U, "UPSTREAM_INTERRUPTED", 150))],
     TEXT[:100], "proto", [(0, 0)]),
    ("a gap", {}, [([chunk(0, 100), chunk(150, 200)], None)], TEXT[:100], "proto", [(0, 0)]),
    ("an overlap within a call", {}, [([chunk(0, 100), chunk(90, 200)], None)], TEXT[:100], "proto", [(0, 0)]),
    ("data past the limit", {"limit": 50}, [([chunk(0, 40), chunk(40, 80)], None)], TEXT[:40], "proto", [(0, 50)]),
    ("OK before the announced size", {}, [([chunk(0, 100, 300)], None)], TEXT[:100], "proto", [(0, 0)]),
    ("a followed stream OK before the action finished", {"follow": True},
     [([chunk(0, 100)], None)], TEXT[:100], "proto", [(0, 0)]),
    ("a followed stream through the server's time limit", {"follow": True},
     [([chunk(0, 100)], ended(D, "FOLLOW_TIME_LIMIT", 100)),
      ([chunk(100, 200), buildlog_pb2.DownloadTaskLogResponse(offset=200, action=FINISHED)], None)],
     TEXT[:200], None, [(0, 0), (100, 0)]),
    ("throttled with a retry delay", {},
     [([], ended(R, "OVERLOADED", retry_delay=0.001)), ([chunk(0, 10, 10)], None)],
     TEXT[:10], None, [(0, 0), (0, 0)]),
    ("throttled without a retry delay is final", {},
     [([], ended(R, "UPSTREAM_THROTTLED"))], b"", R, [(0, 0)]),
    ("a deadline that is not the follow limit is final", {"follow": True},
     [([], ended(D, "DEADLINE_EXCEEDED"))], b"", D, [(0, 0)]),
    ("a resumed call OK without a message", {},
     [([chunk(0, 100, 300)], ended(U, "UPSTREAM_INTERRUPTED", 100)), ([], None)],
     TEXT[:100], "proto", [(0, 0), (100, 0)]),
    ("a resumed call OK before the size the first announced", {},
     [([chunk(0, 100, 300)], ended(U, "UPSTREAM_INTERRUPTED", 100)), ([chunk(100, 200)], None)],
     TEXT[:200], "proto", [(0, 0), (100, 0)]),
    ("a resumed call announcing another size", {},
     [([chunk(0, 100, 300)], ended(U, "UPSTREAM_INTERRUPTED", 100)), ([chunk(100, 200, 200)], None)],
     TEXT[:100], "proto", [(0, 0), (100, 0)]),
    ("a resumed call without the size, complete", {},
     [([chunk(0, 100, 300)], ended(U, "UPSTREAM_INTERRUPTED", 100)), ([chunk(100, 300)], None)],
     TEXT[:300], None, [(0, 0), (100, 0)]),
    ("data past the announced size", {}, [([chunk(0, 100, 300), chunk(100, 400)], None)],
     TEXT[:100], "proto", [(0, 0)]),
    ("a followed finished log announcing another size after a resume", {"follow": True},
     [([chunk(0, 100, 300)], ended(D, "FOLLOW_TIME_LIMIT", 100)),
      ([chunk(100, 200, 200), buildlog_pb2.DownloadTaskLogResponse(offset=200, action=FINISHED)], None)],
     TEXT[:100], "proto", [(0, 0), (100, 0)]),
    ("a followed log whose size is known once its action finished", {"follow": True},
     [([chunk(0, 100)], ended(D, "FOLLOW_TIME_LIMIT", 100)),
      ([chunk(100, 250, 250), buildlog_pb2.DownloadTaskLogResponse(offset=250, action=FINISHED)], None)],
     TEXT[:250], None, [(0, 0), (100, 0)]),
    ("the log changed", {},
     [([chunk(0, 10)], ended(grpc.StatusCode.ABORTED, "LOG_CHANGED", 0))], TEXT[:10], grpc.StatusCode.ABORTED, [(0, 0)]),
]


@pytest.mark.parametrize("name,kwargs,steps,want,want_code,want_reqs", CASES, ids=[c[0] for c in CASES])
def test_scripted(scripted, name, kwargs, steps, want, want_code, want_reqs):
    server, client = scripted(*steps)
    stream = client.download("r" * 36, "stage1", **kwargs)
    got = bytearray()
    err = None
    try:
        for c in stream:
            got += c
    except BuildLogError as e:
        err = e
    if want_code is None:
        assert err is None and stream.done
    elif want_code == "proto":
        assert err is not None and err.protocol_error and err.code == grpc.StatusCode.DATA_LOSS
    else:
        assert err is not None and err.code == want_code and not err.protocol_error
    assert bytes(got) == want
    assert stream.written == len(want)
    assert [(r.offset, r.limit) for r in server.requests] == want_reqs
    assert all(r.follow == kwargs.get("follow", False) for r in server.requests)
    assert stream.calls == len(server.requests)


def test_progress_resets_the_budget(scripted):
    u = ended(U, "UPSTREAM_UNREACHABLE")
    server, client = scripted(
        ([chunk(0, 1)], u), ([], u), ([chunk(1, 2)], u), ([], u), ([chunk(2, 3)], u), ([chunk(3, 4, 4)], None))
    reconnects = []
    stream = client.download("r" * 36, "stage1", max_retries=2, on_reconnect=reconnects.append)
    assert stream.read() == TEXT[:4]
    assert stream.calls == 6 and len(reconnects) == 5
    assert [r.failures for r in reconnects] == [0, 1, 0, 1, 0]
    assert all(r.delay == 0 for r in reconnects if r.failures == 0)


def test_calls_without_progress_in_a_row(scripted):
    server, client = scripted(([], ended(U, "UPSTREAM_UNREACHABLE")))
    stream = client.download("r" * 36, "stage1", max_retries=3)
    with pytest.raises(BuildLogError) as ei:
        stream.read()
    assert ei.value.code == U and ei.value.reason == "UPSTREAM_UNREACHABLE"
    assert stream.calls == 4 == ei.value.calls


def test_a_callback_error_fails_the_stream_for_good(scripted):
    """An on_reconnect that raises ends the download: later reads raise too,
    never a normal end with a short log."""
    server, client = scripted(([chunk(0, 100, 300)], ended(U, "UPSTREAM_INTERRUPTED", 100)),
                              ([chunk(100, 300)], None))

    def on_reconnect(r):
        if len(server.requests) == 1:
            raise RuntimeError("boom")

    stream = client.download("r" * 36, "stage1", on_reconnect=on_reconnect)
    assert next(stream) == TEXT[:100]
    with pytest.raises(RuntimeError):
        next(stream)
    for _ in range(2):
        with pytest.raises(BuildLogError) as ei:
            stream.read()
        assert ei.value.reason == "DOWNLOAD_FAILED" and ei.value.offset == 100
        assert isinstance(ei.value.__cause__, RuntimeError)
    with pytest.raises(BuildLogError):
        list(stream)
    assert not stream.done and stream.written == 100 and len(server.requests) == 1


def test_an_on_action_error_fails_the_stream_for_good(scripted):
    running = buildlog_pb2.ActionState(finished=False, status="running")
    server, client = scripted(([buildlog_pb2.DownloadTaskLogResponse(offset=0, action=running), chunk(0, 10)],
                               ended(U, "FOLLOW_INTERRUPTED", 0)))

    def on_action(a):
        raise ValueError("no")

    stream = client.follow("r" * 36, "stage1", on_action=on_action)
    with pytest.raises(ValueError):
        stream.read()
    with pytest.raises(BuildLogError) as ei:
        next(stream)
    assert ei.value.reason == "DOWNLOAD_FAILED" and not stream.done


@pytest.mark.parametrize("when", ["in_the_pause", "in_on_reconnect"])
def test_close_before_a_reconnect_is_cancelled(scripted, when):
    """Client.close() while a download waits to reconnect: it ends with
    CANCELLED, not grpc's ValueError of a closed channel."""
    server, fast = scripted(([], ended(U, "UPSTREAM_UNREACHABLE")))
    client = Client(fast.address, "t", min_backoff=0.4, max_backoff=0.4)
    timer = None
    if when == "in_the_pause":
        def on_reconnect(r):
            nonlocal timer
            timer = threading.Timer(0.05, client.close)
            timer.start()
    else:
        def on_reconnect(r):
            client.close()
    stream = client.download("r" * 36, "stage1", on_reconnect=on_reconnect)
    try:
        with pytest.raises(BuildLogError) as ei:
            stream.read()
    finally:
        if timer is not None:
            timer.join()
        client.close()
    assert ei.value.code == grpc.StatusCode.CANCELLED and ei.value.reason == "CLIENT_CLOSED"
    assert "the client was closed" in ei.value.message
    assert stream.calls == 1 and len(server.requests) == 1
    with pytest.raises(BuildLogError) as again:
        stream.read()
    assert again.value is ei.value


def test_a_followed_call_ended_with_nothing_new_pauses(scripted):
    """A followed call ended regularly is progress (the budget is reset),
    yet with no new bytes the next call waits min_backoff: a server that
    ends every call at once makes no tight loop."""
    running = buildlog_pb2.ActionState(finished=False, status="running")
    idle = ([buildlog_pb2.DownloadTaskLogResponse(offset=0, action=running)], ended(U, "FOLLOW_INTERRUPTED", 0))
    last = ([chunk(0, 10), buildlog_pb2.DownloadTaskLogResponse(offset=10, action=FINISHED)], None)
    server, fast = scripted(idle, idle, idle, idle, last)
    reconnects = []
    with Client(fast.address, "t", min_backoff=0.05, max_backoff=0.1) as client:
        stream = client.follow("r" * 36, "stage1", max_retries=1, on_reconnect=reconnects.append)
        t0 = time.monotonic()
        assert stream.read() == TEXT[:10]
        elapsed = time.monotonic() - t0
    assert stream.calls == 5 and [r.failures for r in reconnects] == [0, 0, 0, 0]
    assert all(r.delay >= 0.05 for r in reconnects)
    assert elapsed >= 4 * 0.05


def test_metadata_and_routing_key_are_sent(scripted):
    seen = []

    class Probe(Scripted):
        def DownloadTaskLog(self, request, context):
            seen.append(dict(context.invocation_metadata()))
            yield from super().DownloadTaskLog(request, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    buildlog_pb2_grpc.add_BuildLogServiceServicer_to_server(Probe([([chunk(0, 5, 5)], None)]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", "tok", bearer="bear") as c:
            assert c.download("r" * 36, "stage 1", level="debug").read() == TEXT[:5]
    finally:
        server.stop(None)
    md = seen[0]
    assert md["x-auth-token"] == "tok"
    assert md["authorization"] == "Bearer bear"
    assert md["buildlog-log-key"] == "r" * 36 + "/stage+1/DEBUG"

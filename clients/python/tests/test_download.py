"""Downloads against the test bed's real buildlogd."""

import io
import uuid

import grpc
import pytest

from buildlog_client import BuildLogError, Client, LogLevel

# More than one chunk (256 KiB) and not a multiple of it.
SIZE = 1_000_003


@pytest.fixture
def client(testbed):
    with Client(testbed.grpc_addr, testbed.token, min_backoff=0.01, max_backoff=0.2) as c:
        yield c


def test_plain_download_is_byte_identical(testbed, client):
    record = testbed.add_log(SIZE)
    stream = client.download(record, "stage1")
    # The metadata is there before the first chunk is taken.
    assert stream.total_size == SIZE
    assert stream.file_name == f"{record}-stage1.log"
    assert stream.content_type
    chunks = list(stream)
    assert len(chunks) > 1
    assert b"".join(chunks) == testbed.content(record, "stage1")
    assert stream.done and stream.calls == 1 and stream.written == SIZE
    assert stream.action is None  # no action state without follow


def test_write_to_and_debug_level(testbed, client):
    record = testbed.add_log(SIZE)
    f = io.BytesIO()
    n = client.download(record, "stage1", level="debug").write_to(f)
    want = testbed.content(record, "stage1", "LOG_LEVEL_DEBUG")
    assert f.getvalue() == want and n == len(want)
    assert want != testbed.content(record, "stage1", "LOG_LEVEL_INFO")
    assert client.download(record, "stage1", level=LogLevel.INFO).read() == testbed.content(record, "stage1", "LOG_LEVEL_INFO")


def test_offset_and_limit(testbed, client):
    record = testbed.add_log(SIZE)
    content = testbed.content(record, "stage1")
    stream = client.download(record, "stage1", offset=300_001)
    assert stream.read() == content[300_001:]
    assert stream.position == SIZE and stream.written == SIZE - 300_001
    assert client.download(record, "stage1", offset=12_345, limit=600_000).read() == content[12_345:612_345]
    # An offset equal to the size: no data, OK.
    assert client.download(record, "stage1", offset=SIZE).read() == b""


def test_offset_past_the_end_is_out_of_range(testbed, client):
    record = testbed.add_log(1000)
    with pytest.raises(BuildLogError) as ei:
        client.download(record, "stage1", offset=1001).read()
    assert ei.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert ei.value.reason and ei.value.domain == "buildlog"
    assert ei.value.calls == 1


def test_a_cut_the_upstream_cannot_resume_is_resumed(testbed, client):
    """buildlogd resumes one cut itself; the second ends its stream with
    UNAVAILABLE/UPSTREAM_INTERRUPTED and resumeOffset, from which the
    library calls again."""
    record = testbed.add_log(2_000_000)
    content = testbed.content(record, "stage1")
    testbed.post("/fault", {"record_id": record, "cut_after": 300_000, "times": 2})
    before = testbed.stats()
    reconnects = []
    stream = client.download(record, "stage1", on_reconnect=reconnects.append)
    assert stream.read() == content
    after = testbed.stats()
    assert stream.calls == 2
    assert len(reconnects) == 1
    r = reconnects[0]
    assert r.error.code == grpc.StatusCode.UNAVAILABLE
    assert r.error.reason == "UPSTREAM_INTERRUPTED"
    assert 0 < r.offset < len(content) and r.offset == r.error.resume_offset
    assert r.failures == 0 and r.delay == 0  # the call made progress: at once
    # Resumed, not started over: the upstream sent each byte once (two cut
    # requests of 300,000 bytes, then the rest from 600,000).
    assert after["upstream_requests"] - before["upstream_requests"] == 3
    assert after["upstream_bytes"] - before["upstream_bytes"] == len(content)


def test_refused_token(testbed):
    record = testbed.add_log(1000)
    with Client(testbed.grpc_addr, testbed.bad_token) as c:
        stream = c.download(record, "stage1")
        with pytest.raises(BuildLogError) as ei:
            stream.read()
    e = ei.value
    assert e.code == grpc.StatusCode.UNAUTHENTICATED
    assert e.reason == "UPSTREAM_UNAUTHENTICATED" and e.domain == "buildlog"
    assert e.metadata.get("httpStatus") == "401"
    assert e.message and "UNAUTHENTICATED" in str(e)
    assert e.calls == 1 and e.offset == 0  # final: not retried
    assert not e.retryable
    # Iterating again raises the same error rather than ending quietly.
    with pytest.raises(BuildLogError):
        next(stream)


def test_no_token(testbed):
    record = testbed.add_log(1000)
    with Client(testbed.grpc_addr) as c:
        with pytest.raises(BuildLogError) as ei:
            c.download(record, "stage1").read()
    assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert ei.value.reason == "MISSING_TOKEN"


def test_missing_log(testbed, client):
    with pytest.raises(BuildLogError) as ei:
        client.download(str(uuid.uuid4()), "stage1").read()
    e = ei.value
    assert e.code == grpc.StatusCode.NOT_FOUND
    assert e.reason == "UPSTREAM_NOT_FOUND"
    assert e.metadata.get("httpStatus") == "404" and e.request_id


def test_invalid_request(testbed, client):
    with pytest.raises(BuildLogError) as ei:
        client.download("not-a-record-id", "stage1").read()
    e = ei.value
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(field == "record_id" for field, _ in e.violations)


def test_upstream_error_metadata(testbed, client):
    record = testbed.add_log(1000)
    testbed.post("/fault", {"record_id": record, "status": 403, "code": "CB.00060403", "message": "no access", "times": 1})
    with pytest.raises(BuildLogError) as ei:
        client.download(record, "stage1").read()
    e = ei.value
    assert e.code == grpc.StatusCode.PERMISSION_DENIED
    assert e.reason == "UPSTREAM_PERMISSION_DENIED"
    assert e.metadata["upstreamErrorCode"] == "CB.00060403"
    assert "no access" in e.message


def test_the_budget_ends_with_an_error_not_a_short_log(testbed, client):
    """A download that got part of the log and then only failures raises
    once its budget is spent; the bytes delivered are a correct prefix."""
    record = testbed.add_log(2_000_000)
    content = testbed.content(record, "stage1")
    testbed.post("/fault", {"record_id": record, "cut_after": 300_000, "times": 2})
    reconnects = []

    def on_reconnect(r):
        reconnects.append(r)
        if len(reconnects) == 1:  # from now on the upstream fails, no progress
            testbed.post("/fault", {"record_id": record, "status": 503, "times": 10_000})

    got = bytearray()
    stream = client.download(record, "stage1", max_retries=3, on_reconnect=on_reconnect)
    with pytest.raises(BuildLogError) as ei:
        for chunk in stream:
            got += chunk
    e = ei.value
    assert e.code == grpc.StatusCode.UNAVAILABLE and e.reason == "UPSTREAM_UNAVAILABLE"
    assert 0 < len(got) < len(content)
    assert bytes(got) == content[:len(got)]
    assert e.offset == len(got) == stream.written
    # The call that made progress, then 1 + 3 retries without.
    assert e.calls == 5 and [r.failures for r in reconnects] == [0, 1, 2, 3]
    assert not stream.done


def test_reconnecting_off(testbed, client):
    record = testbed.add_log(2_000_000)
    testbed.post("/fault", {"record_id": record, "cut_after": 300_000, "times": 2})
    stream = client.download(record, "stage1", max_retries=0)
    with pytest.raises(BuildLogError) as ei:
        stream.read()
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    assert ei.value.resume_offset == ei.value.offset == stream.written > 0
    assert stream.calls == 1


def test_server_unreachable(testbed):
    # A port nothing listens on: the testbed's control port speaks HTTP/1
    # only, so use a closed one: bind, read the port, close.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with Client(f"127.0.0.1:{port}", "t", max_retries=2, min_backoff=0.01, max_backoff=0.02) as c:
        stream = c.download(str(uuid.uuid4()), "stage1")
        with pytest.raises(BuildLogError) as ei:
            stream.read()
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    assert stream.calls == 3


def test_close_ends_the_download(testbed, client):
    record = testbed.add_log(SIZE)
    with client.download(record, "stage1") as stream:
        first = next(stream)
        assert first == testbed.content(record, "stage1")[:len(first)]
    with pytest.raises(ValueError):
        next(stream)
    assert not stream.done


def test_generated_stubs_work_on_the_client_channel(testbed, client):
    from buildlog.v1 import buildlog_pb2, buildlog_pb2_grpc

    record = testbed.add_log(1000)
    stub = buildlog_pb2_grpc.BuildLogServiceStub(client.channel)
    req = buildlog_pb2.DownloadTaskLogRequest(record_id=record, task_name="stage1")
    data = b"".join(m.data for m in stub.DownloadTaskLog(req, metadata=[("x-auth-token", testbed.token)]))
    assert data == testbed.content(record, "stage1")

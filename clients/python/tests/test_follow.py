"""Follows against the test bed's real buildlogd, across its restarts."""

import threading
import time
import uuid

import grpc
import pytest

from buildlog_client import ActionState, BuildLogError, Client


@pytest.fixture
def client(testbed):
    with Client(testbed.grpc_addr, testbed.token, min_backoff=0.05, max_backoff=0.5) as c:
        yield c


def new_action(testbed, size):
    record = str(uuid.uuid4())
    testbed.post("/action", {"record_id": record, "task_name": "stage1", "size": size})
    return record


def read_at_least(stream, n):
    got = bytearray()
    while len(got) < n:
        got += next(stream)
    return got


def test_follow_a_growing_action(testbed, client):
    record = new_action(testbed, 100_000)
    actions = []
    stream = client.follow(record, "stage1", on_action=actions.append)
    # A running action's log has no size yet.
    assert stream.metadata is not None and stream.total_size is None
    got = read_at_least(stream, 100_000)
    for _ in range(3):
        testbed.post("/grow", {"record_id": record, "task_name": "stage1", "bytes": 70_000})
        got += read_at_least(stream, 70_000)
    testbed.post("/finish", {"record_id": record, "task_name": "stage1"})
    got += stream.read()
    assert bytes(got) == testbed.content(record, "stage1")
    assert len(got) == 310_000
    assert stream.action is not None and stream.action.finished
    assert actions[0].finished is False and actions[-1] == stream.action
    assert stream.calls == 1


def test_follow_a_finished_log(testbed, client):
    record = testbed.add_log(500_000)
    stream = client.follow(record, "stage1")
    assert stream.read() == testbed.content(record, "stage1")
    assert isinstance(stream.action, ActionState) and stream.action.finished


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "kill"])
def test_follow_through_a_restart(testbed, graceful):
    """buildlogd stops (SIGTERM or SIGKILL) in the middle of a follow and
    stays down for a while; the follow goes on once it is back, and every
    byte arrives exactly once. The Client's default backoff: calls made
    while the channel waits to dial again fail at once and count against
    the budget."""
    record = new_action(testbed, 200_000)
    reconnects = []
    client = Client(testbed.grpc_addr, testbed.token)
    stream = client.follow(record, "stage1", on_reconnect=reconnects.append)
    got = read_at_least(stream, 200_000)
    assert len(got) == 200_000  # the follow now waits for new bytes

    errors = []

    def restart_then_grow():
        try:
            testbed.post("/restart", {"graceful": graceful, "down_ms": 700})
            testbed.post("/grow", {"record_id": record, "task_name": "stage1", "bytes": 150_000})
            testbed.post("/finish", {"record_id": record, "task_name": "stage1"})
        except BaseException as e:  # surfaced by the test below
            errors.append(e)

    t = threading.Thread(target=restart_then_grow)
    t.start()
    try:
        got += stream.read()
    finally:
        t.join()
        client.close()
    assert not errors
    content = testbed.content(record, "stage1")
    assert len(content) == 350_000
    assert bytes(got) == content
    assert stream.action.finished
    assert stream.calls >= 2 and reconnects
    assert all(r.error.code == grpc.StatusCode.UNAVAILABLE for r in reconnects)
    assert all(r.offset == 200_000 for r in reconnects)
    if graceful:
        # buildlogd ended the call itself as it shut down.
        assert reconnects[0].error.reason == "FOLLOW_INTERRUPTED"
        assert reconnects[0].error.resume_offset == 200_000


def test_follow_through_upstream_cuts(testbed, client):
    record = new_action(testbed, 1_000_000)
    testbed.post("/fault", {"record_id": record, "cut_after": 200_000, "times": 2})
    stream = client.follow(record, "stage1")
    got = read_at_least(stream, 1_000_000)
    testbed.post("/finish", {"record_id": record, "task_name": "stage1"})
    got += stream.read()
    assert bytes(got) == testbed.content(record, "stage1")
    assert stream.calls == 2


def test_follow_with_a_limit_ends_at_the_limit(testbed, client):
    record = new_action(testbed, 50_000)
    stream = client.follow(record, "stage1", offset=10_000, limit=30_000)
    assert stream.read() == testbed.content(record, "stage1")[10_000:40_000]
    assert stream.action is not None and not stream.action.finished


def test_follow_missing(testbed, client):
    with pytest.raises(BuildLogError) as ei:
        client.follow(str(uuid.uuid4()), "stage1").read()
    assert ei.value.code == grpc.StatusCode.NOT_FOUND


def test_cancel_from_another_thread(testbed, client):
    record = new_action(testbed, 10_000)
    stream = client.follow(record, "stage1")
    read_at_least(stream, 10_000)
    timer = threading.Timer(0.2, stream.cancel)
    timer.start()
    try:
        with pytest.raises(BuildLogError) as ei:
            stream.read()  # the action never finishes
    finally:
        timer.cancel()
    assert ei.value.code == grpc.StatusCode.CANCELLED


def test_timeout_of_the_whole_download(testbed):
    record = new_action(testbed, 10_000)
    with Client(testbed.grpc_addr, testbed.token) as c:
        stream = c.follow(record, "stage1", timeout=1.0)
        with pytest.raises(BuildLogError) as ei:
            stream.read()
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ei.value.offset == 10_000


def test_follow_through_the_follow_time_limit(follow_limit_testbed):
    """buildlogd (--follow-max-duration 300ms) ends each followed call with
    DEADLINE_EXCEEDED/FOLLOW_TIME_LIMIT and a resumeOffset while the action
    grows for over a second; the library follows on with new calls, and
    every byte arrives exactly once."""
    tb = follow_limit_testbed
    record = new_action(tb, 100_000)
    reconnects = []
    seen = threading.Condition()

    def on_reconnect(r):
        with seen:
            reconnects.append(r)
            seen.notify_all()

    errors = []
    stop = []  # set once the read ended, however it ended

    def grow_then_finish():
        try:
            for _ in range(4):
                time.sleep(0.3)
                tb.post("/grow", {"record_id": record, "task_name": "stage1", "bytes": 40_000})
            # Not a timing assertion: the finish just waits (boundedly) until
            # the limit has ended at least two calls, so the check below does
            # not depend on how fast this machine is.
            with seen:
                seen.wait_for(lambda: len(reconnects) >= 2 or stop, timeout=30)
            tb.post("/finish", {"record_id": record, "task_name": "stage1"})
        except BaseException as e:  # surfaced by the test below
            errors.append(e)

    with Client(tb.grpc_addr, tb.token, min_backoff=0.05, max_backoff=0.5) as client:
        stream = client.follow(record, "stage1", on_reconnect=on_reconnect)
        t = threading.Thread(target=grow_then_finish)
        t.start()
        try:
            got = stream.read()
        finally:
            with seen:
                stop.append(True)  # should read fail, the grower stops waiting
                seen.notify_all()
            t.join()
    assert not errors
    content = tb.content(record, "stage1")
    assert len(content) == 260_000
    assert got == content
    assert stream.done and stream.action is not None and stream.action.finished
    assert len(reconnects) >= 2
    assert stream.calls == len(reconnects) + 1
    for r in reconnects:
        assert r.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert r.error.reason == "FOLLOW_TIME_LIMIT"
        assert r.error.resume_offset is not None
        assert r.offset == r.error.resume_offset  # the next call starts there
        assert 0 <= r.offset <= len(content)
    offsets = [r.offset for r in reconnects]
    assert offsets == sorted(offsets)

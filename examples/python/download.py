#!/usr/bin/env python3
"""Download one CodeArts Build action log from buildlog over gRPC to stdout.

Uses grpcio and protobuf (Debian: apt-get install python3-grpcio
python3-protobuf) and the stubs in gen/, generated from the same proto as
the Go code (buf.gen.python.yaml).

    python3 download.py --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log
    python3 download.py --addr localhost:9090 --record-id ID --task-name stage2 --token T --follow

The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
code and message to stderr and exits 1.

With --follow the log is followed while its action runs (follow=true): the
stream stays open and delivers new bytes as the action writes them, and
ends OK once the action finished. The server ends a followed call early for
reasons meant to be resumed (its follow time limit, a restart, an upstream
failure); the error's google.rpc.ErrorInfo then carries "resumeOffset", and
this script calls again from there, as the Go client package does. The
action's final status goes to stderr.
"""

import argparse
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402

from buildlog.v1 import buildlog_pb2, buildlog_pb2_grpc  # noqa: E402

LOG_LEVELS = {
    "info": buildlog_pb2.LOG_LEVEL_INFO,
    "debug": buildlog_pb2.LOG_LEVEL_DEBUG,
}

# Calls in a row that may end without progress before giving up, and the
# pauses between them (doubling from the first to the longest).
MAX_RETRIES = 10
FIRST_PAUSE, LONGEST_PAUSE = 0.1, 5.0


class Incomplete(Exception):
    """The server broke the stream's contract: the log is not complete."""


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Stream a CodeArts Build action log from buildlog to stdout.")
    parser.add_argument("--addr", required=True, help="buildlog gRPC address, HOST:PORT")
    parser.add_argument("--record-id", required=True, help="build record id (36 characters)")
    parser.add_argument("--task-name", required=True, help="build action, such as stage1")
    parser.add_argument("--token", default=os.environ.get("BUILDLOG_TOKEN", ""),
                        help="IAM token (default: $BUILDLOG_TOKEN)")
    parser.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    parser.add_argument("--follow", "-f", action="store_true",
                        help="follow the log until its action finished, calling again after resumable endings")
    args = parser.parse_args()
    if not args.token:
        parser.error("no token: pass --token or set BUILDLOG_TOKEN")

    out = sys.stdout.buffer
    with grpc.insecure_channel(args.addr) as channel:
        stub = buildlog_pb2_grpc.BuildLogServiceStub(channel)
        try:
            action = download(stub, args, out)
        except grpc.RpcError as err:
            print(f"download.py: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except Incomplete as err:
            print(f"download.py: {err}", file=sys.stderr)
            return 1
        finally:
            out.flush()
    if args.follow:
        status = f": {action.status}" if action.status else ""
        print(f"download.py: action finished{status}", file=sys.stderr)
    return 0


def log_key(record_id, task_name, level):
    """The log's routing key, as the Go client's api.LogKey makes it."""
    quote = urllib.parse.quote_plus
    return f"{quote(record_id)}/{quote(task_name)}/{'DEBUG' if level == 'debug' else 'INFO'}"


def download(stub, args, out):
    """Writes the log to out; returns the last action state (following)."""
    pos = 0  # where the bytes written end
    start = 0  # where the next call starts
    action = buildlog_pb2.ActionState()
    failures = 0
    while True:
        request = buildlog_pb2.DownloadTaskLogRequest(
            record_id=args.record_id, task_name=args.task_name,
            log_level=LOG_LEVELS[args.log_level], offset=start, follow=args.follow)
        stream = stub.DownloadTaskLog(request, metadata=[
            ("x-auth-token", args.token),
            # For a proxy to route every call for this log to one replica,
            # where they share upstream reads (README: Routing).
            ("buildlog-log-key", log_key(args.record_id, args.task_name, args.log_level)),
        ])
        expected, before, received = start, pos, False
        try:
            for msg in stream:
                received = True
                # Offsets are contiguous; a gap would mean a corrupted log.
                if msg.offset != expected:
                    raise Incomplete(f"chunk at offset {msg.offset}, expected {expected}")
                if msg.HasField("action"):
                    action = msg.action
                data = msg.data[max(pos - msg.offset, 0):]  # skip bytes received before
                expected += len(msg.data)
                out.write(data)
                pos += len(data)
        except grpc.RpcError as err:
            if not args.follow or not retryable(err):
                raise
            reason, metadata = error_info(err)
            start = int(metadata.get("resumeOffset", pos))
            if start > pos:
                raise Incomplete(f"resumeOffset {start} is past the {pos} bytes received") from err
            # A call that wrote bytes, or that the server ended as it ends
            # followed calls regularly, is progress: call again at once.
            if pos > before or received and reason in ("FOLLOW_TIME_LIMIT", "FOLLOW_INTERRUPTED"):
                failures = 0
            else:
                failures += 1
                if failures > MAX_RETRIES:
                    raise
            pause = min(FIRST_PAUSE * 2 ** (failures - 1), LONGEST_PAUSE) if failures else 0
            print(f"download.py: {err.code().name}: {err.details()}; "
                  f"calling again from offset {start} in {pause:.1f}s", file=sys.stderr)
            time.sleep(pause)
            continue
        if args.follow and not action.finished:
            raise Incomplete(f"the followed stream ended at offset {pos} before the action finished")
        return action


def retryable(err):
    """Whether a followed call that ended with err may go on: UNAVAILABLE,
    or the server's follow time limit."""
    reason, _ = error_info(err)
    return err.code() == grpc.StatusCode.UNAVAILABLE or (
        err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reason == "FOLLOW_TIME_LIMIT")


def error_info(err):
    """The reason and metadata of the error's google.rpc.ErrorInfo, read from
    the grpc-status-details-bin trailer (a google.rpc.Status).

    With grpcio-status and googleapis-common-protos installed,
    grpc_status.rpc_status.from_call(err) does the same; this reads the few
    fields it needs itself, so that grpcio and protobuf are enough."""
    details = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    for num, any_msg in fields(details):
        if num != 3:  # Status.details, a google.protobuf.Any
            continue
        any_fields = dict(fields(any_msg))
        if any_fields.get(1, b"").endswith(b"/google.rpc.ErrorInfo"):
            reason, metadata = "", {}
            for n, v in fields(any_fields.get(2, b"")):
                if n == 1:
                    reason = v.decode()
                elif n == 3:  # map<string, string> metadata: entries of key 1, value 2
                    entry = dict(fields(v))
                    metadata[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
            return reason, metadata
    return "", {}


def fields(buf):
    """Yields (field number, value) of a protobuf message's length-delimited
    fields (strings, bytes, messages); other fields are skipped."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(buf, i)
            yield key >> 3, bytes(buf[i:i + n])
            i += n
        else:
            return


def varint(buf, i):
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


if __name__ == "__main__":
    sys.exit(main())

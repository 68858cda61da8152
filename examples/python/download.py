#!/usr/bin/env python3
"""Download one CodeArts Build action log from buildlog over gRPC to stdout.

Uses grpcio and protobuf (Debian: apt-get install python3-grpcio
python3-protobuf) and the stubs in gen/, generated from the same proto as
the Go code (buf.gen.python.yaml).

    python3 download.py --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log

The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
code and message to stderr and exits 1.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402

from buildlog.v1 import buildlog_pb2, buildlog_pb2_grpc  # noqa: E402

LOG_LEVELS = {
    "info": buildlog_pb2.LOG_LEVEL_INFO,
    "debug": buildlog_pb2.LOG_LEVEL_DEBUG,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Stream a CodeArts Build action log from buildlog to stdout.")
    parser.add_argument("--addr", required=True, help="buildlog gRPC address, HOST:PORT")
    parser.add_argument("--record-id", required=True, help="build record id (36 characters)")
    parser.add_argument("--task-name", required=True, help="build action, such as stage1")
    parser.add_argument("--token", default=os.environ.get("BUILDLOG_TOKEN", ""),
                        help="IAM token (default: $BUILDLOG_TOKEN)")
    parser.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    args = parser.parse_args()
    if not args.token:
        parser.error("no token: pass --token or set BUILDLOG_TOKEN")

    request = buildlog_pb2.DownloadTaskLogRequest(
        record_id=args.record_id, task_name=args.task_name, log_level=LOG_LEVELS[args.log_level])
    out = sys.stdout.buffer
    with grpc.insecure_channel(args.addr) as channel:
        stub = buildlog_pb2_grpc.BuildLogServiceStub(channel)
        stream = stub.DownloadTaskLog(request, metadata=[("x-auth-token", args.token)])
        expected = 0
        try:
            for msg in stream:
                # Offsets are contiguous; a gap would mean a corrupted log.
                if msg.data and msg.offset != expected:
                    print(f"download.py: chunk at offset {msg.offset}, expected {expected}", file=sys.stderr)
                    return 1
                expected += len(msg.data)
                out.write(msg.data)
        except grpc.RpcError as err:
            print(f"download.py: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

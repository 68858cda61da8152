#!/usr/bin/env python3
"""Download one CodeArts Build action log from buildlog over gRPC to stdout.

A thin user of the Python client library (clients/python), which resumes
after the endings the server means to be resumed and checks that every byte
came exactly once. It needs Debian's python3-grpcio and python3-protobuf,
and the library installed (pip install ./clients/python) or, as here when it
is not, from this checkout.

    python3 download.py --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log
    python3 download.py --addr localhost:9090 --record-id ID --task-name stage2 --token T --follow

The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
code and message to stderr and exits 1. With --follow it follows the log
until the action finished and prints the action's final status on stderr.
"""

import argparse
import os
import sys

try:
    import buildlog_client
except ImportError:  # not installed: the library of this checkout
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python")
    sys.path[:0] = [os.path.join(lib, "src"), os.path.join(lib, "gen")]
    import buildlog_client


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="buildlog's gRPC address, host:port")
    p.add_argument("--record-id", required=True)
    p.add_argument("--task-name", required=True)
    p.add_argument("--token", default=os.environ.get("BUILDLOG_TOKEN", ""), help="IAM token (default $BUILDLOG_TOKEN)")
    p.add_argument("--log-level", choices=["info", "debug"], default="info")
    p.add_argument("-f", "--follow", action="store_true", help="follow the log until the action finished")
    args = p.parse_args()

    with buildlog_client.Client(args.addr, token=args.token) as client:
        try:
            stream = client.download(args.record_id, args.task_name, level=args.log_level, follow=args.follow)
            stream.write_to(sys.stdout.buffer)
        except buildlog_client.BuildLogError as e:
            print(f"download.py: {e.code.name}: {e.message}", file=sys.stderr)
            return 1
    if args.follow and stream.action is not None:
        print(f"download.py: action finished: {stream.action.status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

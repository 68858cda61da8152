#!/usr/bin/env python3
"""Throughput of the Python client library against the raw stubs and the Go CLI.

Starts ``buildlogd --demo`` (the simulated upstream in-process) and
downloads its 1 GiB record (8b7c6d5e-4f3a-4b2c-9d1e-0f9e8d7c6b5a, stage1)
in rounds, the paths interleaved within each round:

- ``library``: buildlog_client's Client.download, iterating the chunks;
- ``raw``: the generated stub alone (buildlog.v1.buildlog_pb2_grpc), no
  resume and no checks: what the library adds is the difference;
- ``raw-1t``: the same on a channel with grpc's experimental
  SingleThreadedUnaryStream option;
- ``cli``: the Go CLI, ``buildlog download ... > /dev/null``.

A warm-up round checks that the library and the raw stub got the same
bytes (SHA-256) of the announced size; timed rounds check lengths. It
prints each path's median MiB/s, its ratio to the raw stub, the Python
paths' CPU seconds per GiB, the library's overhead per message, and a
cProfile of one library download split into the grpc runtime, protobuf,
the library and the rest.

    /usr/bin/python3 clients/python/bench.py [--runs 5] [--buildlogd BIN] [--cli BIN]

Run from the repository root (it builds ./cmd/buildlogd and ./cmd/buildlog
with go build unless given binaries). Uses the library from this checkout.
"""

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "src"), os.path.join(HERE, "gen")]

import grpc  # noqa: E402

from buildlog.v1 import buildlog_pb2, buildlog_pb2_grpc  # noqa: E402
from buildlog_client import Client  # noqa: E402

RECORD, TASK, TOKEN = "8b7c6d5e-4f3a-4b2c-9d1e-0f9e8d7c6b5a", "stage1", "demo-token"
MIB = 1 << 20


def build(pkg, out):
    subprocess.run(["go", "build", "-o", out, pkg], check=True, cwd=os.path.dirname(os.path.dirname(HERE)))
    return out


def start_demo(binary):
    proc = subprocess.Popen([binary, "--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
                             "--admin-addr", "off"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if '"msg":"serving"' in line:
            addr = json.loads(line)["grpc"]
            # Keep draining its output so that it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, addr
    raise SystemExit("buildlogd --demo exited before serving")


def run_library(client, digest=None):
    n = msgs = 0
    stream = client.download(RECORD, TASK)
    for chunk in stream:
        n += len(chunk)
        msgs += 1
        if digest is not None:
            digest.update(chunk)
    assert stream.total_size == n, (stream.total_size, n)
    return n, msgs


def run_raw(stub, digest=None):
    n = msgs = 0
    req = buildlog_pb2.DownloadTaskLogRequest(record_id=RECORD, task_name=TASK)
    for m in stub.DownloadTaskLog(req, metadata=[("x-auth-token", TOKEN)]):
        n += len(m.data)
        msgs += 1
        if digest is not None:
            digest.update(m.data)
    return n, msgs


def run_cli(cli, addr):
    r = subprocess.run([cli, "download", "--addr", addr, "--token", TOKEN, "--record-id", RECORD,
                        "--task-name", TASK], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"buildlog download failed: {r.stderr.decode()}")
    return None, None


def timed(f, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    n, msgs = f(*args)
    return time.perf_counter() - w0, time.process_time() - c0, n, msgs


class _Replay:
    """A finished call that replays messages: what the library's LogStream
    gets from grpc, without grpc."""

    def __init__(self, msgs):
        self._it = iter(msgs)

    def __iter__(self):
        return self._it

    def cancel(self):
        pass


def offline_overhead(n=512, chunk=256 * 1024, rounds=5):
    """The library's own CPU time per message: the same messages, in
    memory, through a LogStream and through the raw loop (both read
    m.data, which copies it out of the message)."""
    from buildlog_client._client import LogLevel, LogStream

    data = os.urandom(chunk)
    msgs = [buildlog_pb2.DownloadTaskLogResponse(data=data, offset=i * chunk) for i in range(n)]
    msgs[0].metadata.total_size = n * chunk
    lib, raw = [], []
    for _ in range(rounds):
        t = time.process_time()
        total = 0
        for m in msgs:
            total += len(m.data)
        raw.append(time.process_time() - t)
        stream = LogStream(None, lambda req, metadata, timeout: _Replay(msgs), RECORD, TASK, LogLevel.UNSPECIFIED,
                           0, 0, False, (), None, 0, 0.1, 5.0, None, None)
        t = time.process_time()
        got = 0
        for c in stream:
            got += len(c)
        lib.append(time.process_time() - t)
        assert got == total == n * chunk and stream.done
    lib_us, raw_us = 1e6 * statistics.median(lib) / n, 1e6 * statistics.median(raw) / n
    print(f"\nin memory, {n} messages of {chunk // 1024} KiB (no network): raw loop {raw_us:.1f} us/message "
          f"(mostly copying m.data), library {lib_us:.1f} us/message: the library's own cost "
          f"{lib_us - raw_us:+.1f} us/message")


def profile(client):
    prof = cProfile.Profile()
    prof.enable()
    run_library(client)
    prof.disable()
    st = pstats.Stats(prof)
    buckets = {"grpc runtime": 0.0, "protobuf": 0.0, "library": 0.0, "waiting (threading)": 0.0, "other": 0.0}
    for (file, _line, func), (_cc, _nc, tottime, _ct, _callers) in st.stats.items():
        where = f"{file}:{func}"
        if "buildlog_client" in file:
            buckets["library"] += tottime
        elif "FromString" in func or "protobuf" in where or "ParseFromString" in func or "HasField" in func:
            buckets["protobuf"] += tottime
        elif "grpc" in where or "cygrpc" in where:
            buckets["grpc runtime"] += tottime
        elif "threading" in file or "lock" in func or "wait" in func:
            buckets["waiting (threading)"] += tottime
        else:
            buckets["other"] += tottime
    total = sum(buckets.values())
    print(f"\ncProfile of one library download ({total:.2f} s of profiled time, tottime by where it is spent):")
    for k, v in buckets.items():
        print(f"  {k:22s} {v:7.2f} s  {100 * v / total:5.1f}%")
    print("  top functions:")
    st.sort_stats("tottime")
    for (file, line, func), (_cc, nc, tottime, _ct, _callers) in sorted(
            st.stats.items(), key=lambda kv: -kv[1][2])[:8]:
        print(f"    {tottime:6.2f} s {nc:8d} calls  {os.path.basename(file)}:{line}({func})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--buildlogd", help="buildlogd binary (default: go build ./cmd/buildlogd)")
    ap.add_argument("--cli", help="buildlog CLI binary (default: go build ./cmd/buildlog)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="buildlog-pybench-")
    buildlogd = args.buildlogd or build("./cmd/buildlogd", os.path.join(tmp, "buildlogd"))
    cli = args.cli or build("./cmd/buildlog", os.path.join(tmp, "buildlog"))
    proc, addr = start_demo(buildlogd)
    try:
        client = Client(addr, TOKEN)
        raw_ch = grpc.insecure_channel(addr)
        raw = buildlog_pb2_grpc.BuildLogServiceStub(raw_ch)
        st_ch = grpc.insecure_channel(addr, options=[(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)])
        raw1t = buildlog_pb2_grpc.BuildLogServiceStub(st_ch)

        # Warm-up: the same bytes by both Python paths, of the announced size.
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        n1, msgs = run_library(client, h1)
        n2, _ = run_raw(raw, h2)
        assert n1 == n2 and h1.digest() == h2.digest(), "the library and the raw stub got different bytes"
        size = n1
        print(f"buildlogd --demo at {addr}; record {RECORD} {TASK}: {size} bytes in {msgs} messages "
              f"(sha256 {h1.hexdigest()[:16]}..., same from both)")
        print(f"grpcio {grpc.__version__}, protobuf {__import__('google.protobuf').protobuf.__version__}, "
              f"Python {sys.version.split()[0]}\n")

        paths = {
            "library": (run_library, client),
            "raw": (run_raw, raw),
            "raw-1t": (run_raw, raw1t),
            "cli": (run_cli, cli, addr),
        }
        results = {k: [] for k in paths}
        for r in range(args.runs):
            for name, (f, *fargs) in paths.items():
                wall, cpu, n, m = timed(f, *fargs)
                if n is not None:
                    assert n == size, f"{name}: {n} bytes, want {size}"
                results[name].append((wall, cpu))
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {size / MIB / v[-1][0]:.0f} MiB/s" for k, v in results.items()), flush=True)

        raw_med = statistics.median(size / MIB / w for w, _ in results["raw"])
        print(f"\nmedian of {args.runs} rounds, {size / MIB:.0f} MiB each:")
        print(f"  {'path':8s} {'MiB/s':>7s} {'vs raw':>7s} {'py CPU s/GiB':>13s}")
        med = {}
        for name, rs in results.items():
            mibs = statistics.median(size / MIB / w for w, _ in rs)
            med[name] = rs
            cpu = "" if name == "cli" else f"{statistics.median(c for _, c in rs) * (1 << 30) / size:.2f}"
            print(f"  {name:8s} {mibs:7.0f} {mibs / raw_med:7.2f} {cpu:>13s}")
        lib_w = statistics.median(w for w, _ in results["library"])
        raw_w = statistics.median(w for w, _ in results["raw"])
        lib_c = statistics.median(c for _, c in results["library"])
        raw_c = statistics.median(c for _, c in results["raw"])
        print(f"\nlibrary over raw stubs, per message ({msgs} messages): "
              f"wall {1e6 * (lib_w - raw_w) / msgs:+.1f} us, CPU {1e6 * (lib_c - raw_c) / msgs:+.1f} us "
              f"(raw: {1e6 * raw_w / msgs:.0f} us wall per message)")

        offline_overhead()
        if not args.no_profile:
            profile(client)
        client.close()
        raw_ch.close()
        st_ch.close()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()

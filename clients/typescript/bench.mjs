#!/usr/bin/env node
// Throughput of the TypeScript client on the demo's 1 GiB log, against the
// raw connect stubs and the Go CLI, in the same run:
//
//   npm ci && node bench.mjs [--runs 5] [--addr HOST:PORT]
//
// Without --addr it starts `buildlogd --demo` itself (BUILDLOGD names a
// binary; else it is built with `go build ./cmd/buildlogd` from the
// repository root), and the Go CLI likewise (BUILDLOG_CLI, else built).
// Each run downloads the log once per path, the paths interleaved; it
// prints each run and then the median MiB/s, the ratios to the Go CLI, and
// the time the library adds per message over the raw stubs.
//
// Paths: lib (this library), raw+win (the raw connect stubs with the
// library's HTTP/2 windows), raw (the raw stubs with Node's default 64 KiB
// windows), go (the Go CLI, `buildlog download -o /dev/null`).
//
//   --only lib|raw+win|raw|go   measure one path (for `node --cpu-prof bench.mjs --only lib --runs 1`)
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import {
  createBuildLogClient,
  BuildLogService,
  logKey,
  LogLevel,
  pb,
  DEFAULT_STREAM_WINDOW_BYTES,
  DEFAULT_CONNECTION_WINDOW_BYTES,
} from "./dist/index.js";

const RECORD = "8b7c6d5e-4f3a-4b2c-9d1e-0f9e8d7c6b5a";
const TASK = "stage1";
const TOKEN = "demo-token";
const MiB = 1 << 20;
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

const { values: args } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    addr: { type: "string" },
    only: { type: "string" },
  },
});
const runs = Number(args.runs);

const tmp = mkdtempSync(path.join(tmpdir(), "buildlog-bench-"));
function binary(env, pkg, name) {
  if (process.env[env]) return process.env[env];
  const out = path.join(tmp, name);
  execFileSync("go", ["build", "-o", out, pkg], { cwd: repoRoot, stdio: "inherit" });
  return out;
}

// Starts buildlogd --demo and resolves with its gRPC address, read from its
// "serving" log line.
async function startDemo() {
  const bin = binary("BUILDLOGD", "./cmd/buildlogd", "buildlogd");
  const p = spawn(bin, ["--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const lines = createInterface({ input: p.stderr });
  const addr = await new Promise((resolve, reject) => {
    lines.on("line", (l) => {
      try {
        const j = JSON.parse(l);
        if (j.msg === "serving" && j.grpc) resolve(j.grpc);
      } catch {
        // not a JSON line
      }
    });
    p.once("exit", (c) => reject(new Error(`buildlogd --demo exited (${c})`)));
  });
  return { addr, stop: () => p.kill("SIGTERM") };
}

async function viaLibrary(addr) {
  const client = createBuildLogClient({ address: addr, token: TOKEN });
  let bytes = 0;
  let messages = 0;
  const t0 = performance.now();
  for await (const chunk of client.download({ recordId: RECORD, taskName: TASK })) {
    bytes += chunk.length;
    messages++;
  }
  const ms = performance.now() - t0;
  client.close();
  return { bytes, messages, ms };
}

// The raw connect stubs, with Node's HTTP/2 windows (64 KiB) or, `windows`,
// with the library's (DEFAULT_STREAM_WINDOW_BYTES per call, and
// DEFAULT_CONNECTION_WINDOW_BYTES for the connection).
async function viaRawStubs(addr, windows) {
  const nodeOptions = windows ? { settings: { initialWindowSize: DEFAULT_STREAM_WINDOW_BYTES } } : {};
  const session = new Http2SessionManager(`http://${addr}`, {}, nodeOptions);
  let manager = session;
  if (windows) {
    manager = {
      authority: session.authority,
      async request(...a) {
        const stream = await session.request(...a);
        stream.session.setLocalWindowSize(DEFAULT_CONNECTION_WINDOW_BYTES);
        return stream;
      },
      notifyResponseByteRead: (stream) => session.notifyResponseByteRead(stream),
    };
  }
  const service = createClient(BuildLogService, createGrpcTransport({ baseUrl: `http://${addr}`, sessionManager: manager }));
  const req = create(pb.DownloadTaskLogRequestSchema, { recordId: RECORD, taskName: TASK });
  const headers = { "x-auth-token": TOKEN, "buildlog-log-key": logKey(RECORD, TASK, LogLevel.UNSPECIFIED) };
  let bytes = 0;
  let messages = 0;
  const t0 = performance.now();
  for await (const msg of service.downloadTaskLog(req, { headers })) {
    bytes += msg.data.length;
    messages++;
  }
  const ms = performance.now() - t0;
  session.abort();
  return { bytes, messages, ms };
}

let cli;
async function viaGoCLI(addr) {
  cli ??= binary("BUILDLOG_CLI", "./cmd/buildlog", "buildlog");
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    const p = spawn(cli, ["download", "--addr", addr, "--token", TOKEN, "--record-id", RECORD, "--task-name", TASK, "-o", "/dev/null"], {
      stdio: ["ignore", "ignore", "ignore"],
    });
    p.once("exit", (c) => (c === 0 ? resolve() : reject(new Error(`buildlog download exited ${c}`))));
  });
  return { bytes: 1 << 30, messages: NaN, ms: performance.now() - t0 };
}

const paths = { lib: viaLibrary, "raw+win": (a) => viaRawStubs(a, true), raw: (a) => viaRawStubs(a, false), go: viaGoCLI };
const names = args.only ? [args.only] : Object.keys(paths);
const demo = args.addr ? { addr: args.addr, stop() {} } : await startDemo();
const results = Object.fromEntries(names.map((n) => [n, []]));
try {
  for (let i = 1; i <= runs; i++) {
    const line = [];
    for (const n of names) {
      const r = await paths[n](demo.addr);
      if (r.bytes !== 1 << 30) throw new Error(`${n}: ${r.bytes} bytes, not 1 GiB`);
      results[n].push(r);
      line.push(`${n} ${(r.bytes / MiB / (r.ms / 1000)).toFixed(0)} MiB/s`);
    }
    console.log(`run ${i}: ${line.join(", ")}`);
  }
} finally {
  demo.stop();
  rmSync(tmp, { recursive: true, force: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mibs = (r) => r.bytes / MiB / (r.ms / 1000);
const med = Object.fromEntries(names.map((n) => [n, median(results[n].map(mibs))]));
console.log(`median of ${runs} runs: ${names.map((n) => `${n} ${med[n].toFixed(0)} MiB/s`).join(", ")}`);
if (med.go) console.log(`ratios to the Go CLI: ${names.filter((n) => n !== "go").map((n) => `${n} ${(med[n] / med.go).toFixed(2)}`).join(", ")}`);
if (med.lib && med["raw+win"]) {
  const msgs = median(results.lib.map((r) => r.messages));
  const perMsg = (median(results.lib.map((r) => r.ms)) - median(results["raw+win"].map((r) => r.ms))) / msgs;
  console.log(`messages per download: ${msgs} (${((1 << 30) / msgs / 1024).toFixed(0)} KiB each on average)`);
  console.log(`library vs raw stubs with the same windows: ${(med.lib / med["raw+win"]).toFixed(2)}; time added per message: ${(perMsg * 1000).toFixed(1)} µs (difference of median times: noise included, may be negative)`);
}

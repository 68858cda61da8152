#!/usr/bin/env node
// Downloads one CodeArts Build action log from buildlog over gRPC and writes
// it to stdout, using @grpc/grpc-js and the API's .proto file, loaded at run
// time with @grpc/proto-loader (no generated code).
//
//   npm ci
//   node download.mjs --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log
//   node download.mjs --addr localhost:9090 --record-id ID --task-name stage2 --token T --follow
//
// The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
// code and message to stderr and exits 1.
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const usage = `usage: node download.mjs --addr HOST:PORT --record-id ID --task-name NAME [--token TOKEN] [--log-level info|debug] [--follow]

Streams the action log to stdout. The token defaults to $BUILDLOG_TOKEN.
With --follow (-f) it follows the log until the action finished, calling
again from the error's resumeOffset after an ending meant to be resumed,
and prints the action's final status on stderr.`;

function fail(message) {
  process.stderr.write(`download.mjs: ${message}\n`);
  process.exit(1);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      addr: { type: "string" },
      "record-id": { type: "string" },
      "task-name": { type: "string" },
      token: { type: "string", default: process.env.BUILDLOG_TOKEN ?? "" },
      "log-level": { type: "string", default: "info" },
      follow: { type: "boolean", short: "f", default: false },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (err) {
  fail(`${err.message}\n${usage}`);
}
if (args.help) {
  process.stdout.write(usage + "\n");
  process.exit(0);
}
for (const name of ["addr", "record-id", "task-name"]) {
  if (!args[name]) fail(`--${name} is required\n${usage}`);
}
if (!args.token) fail("no token: pass --token or set BUILDLOG_TOKEN");
const logLevel = { info: "LOG_LEVEL_INFO", debug: "LOG_LEVEL_DEBUG" }[args["log-level"].toLowerCase()];
if (!logLevel) fail(`--log-level ${args["log-level"]}: use info or debug`);

const protoRoot = fileURLToPath(new URL("../../proto", import.meta.url));
const definition = protoLoader.loadSync(path.join(protoRoot, "buildlog/v1/buildlog.proto"), {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String, // int64 offsets as decimal strings, without losing precision
  enums: String,
  defaults: true,
});
const { BuildLogService } = grpc.loadPackageDefinition(definition).buildlog.v1;
const client = new BuildLogService(args.addr, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set("x-auth-token", args.token);
// For a proxy to route every call for this log to one replica, where they
// share upstream reads (README: Routing); as the Go client's api.LogKey.
const queryEscape = (s) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase()).replace(/%20/g, "+");
metadata.set("buildlog-log-key", `${queryEscape(args["record-id"])}/${queryEscape(args["task-name"])}/${logLevel === "LOG_LEVEL_DEBUG" ? "DEBUG" : "INFO"}`);
const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// Calls in a row that may end without progress before giving up, and the
// pauses between them in ms (doubling from the first to the longest).
const maxRetries = 10;
const firstPause = 100;
const longestPause = 5000;

// download writes the log to stdout and returns the last action state
// (following): after an ending the server means to be resumed, it calls
// again from the error's resumeOffset, as the Go client package does.
async function download() {
  let pos = 0n; // where the bytes written end
  let start = 0n; // where the next call starts
  let action = null;
  let failures = 0;
  for (;;) {
    const call = client.DownloadTaskLog(
      { record_id: args["record-id"], task_name: args["task-name"], log_level: logLevel, offset: start.toString(), follow: args.follow },
      metadata,
    );
    let expected = start;
    const before = pos;
    let received = false;
    try {
      for await (const msg of call) {
        received = true;
        // Offsets are contiguous; a gap would mean a corrupted log.
        if (BigInt(msg.offset) !== expected) {
          throw new Error(`chunk at offset ${msg.offset}, expected ${expected}`);
        }
        if (msg.action) action = msg.action;
        const skip = pos > expected ? Number(pos - expected) : 0; // bytes received before
        expected += BigInt(msg.data.length);
        const data = msg.data.subarray(Math.min(skip, msg.data.length));
        pos += BigInt(data.length);
        if (!process.stdout.write(data)) {
          await new Promise((resolve) => process.stdout.once("drain", resolve));
        }
      }
    } catch (err) {
      call.cancel();
      if (!args.follow || err.code === undefined || !retryable(err)) throw err;
      const { reason, metadata: md } = errorInfo(err);
      start = md.resumeOffset !== undefined ? BigInt(md.resumeOffset) : pos;
      if (start > pos) throw new Error(`resumeOffset ${start} is past the ${pos} bytes received`);
      // A call that wrote bytes, or that the server ended as it ends
      // followed calls regularly, is progress: call again at once.
      if (pos > before || (received && (reason === "FOLLOW_TIME_LIMIT" || reason === "FOLLOW_INTERRUPTED"))) {
        failures = 0;
      } else if (++failures > maxRetries) {
        throw err;
      }
      const pause = failures ? Math.min(firstPause * 2 ** (failures - 1), longestPause) : 0;
      process.stderr.write(`download.mjs: ${describe(err)}; calling again from offset ${start} in ${pause} ms\n`);
      await new Promise((resolve) => setTimeout(resolve, pause));
      continue;
    }
    if (args.follow && !action?.finished) {
      throw new Error(`the followed stream ended at offset ${pos} before the action finished`);
    }
    return action;
  }
}

// retryable says whether a followed call that ended with err may go on:
// UNAVAILABLE, or the server's follow time limit.
function retryable(err) {
  return err.code === grpc.status.UNAVAILABLE ||
    (err.code === grpc.status.DEADLINE_EXCEEDED && errorInfo(err).reason === "FOLLOW_TIME_LIMIT");
}

// errorInfo returns the reason and metadata of the error's
// google.rpc.ErrorInfo, from the grpc-status-details-bin trailer (a
// google.rpc.Status). It reads the few fields it needs itself, so that
// grpc-js and proto-loader are enough.
function errorInfo(err) {
  const [details] = err.metadata?.get("grpc-status-details-bin") ?? [];
  for (const [num, any] of fields(details ?? Buffer.alloc(0))) {
    if (num !== 3) continue; // Status.details, a google.protobuf.Any
    const anyFields = new Map(fields(any));
    if (!anyFields.get(1)?.toString().endsWith("/google.rpc.ErrorInfo")) continue;
    const info = { reason: "", metadata: {} };
    for (const [n, v] of fields(anyFields.get(2) ?? Buffer.alloc(0))) {
      if (n === 1) info.reason = v.toString();
      if (n === 3) { // map<string, string> metadata: entries of key 1, value 2
        const entry = new Map(fields(v));
        info.metadata[entry.get(1)?.toString() ?? ""] = entry.get(2)?.toString() ?? "";
      }
    }
    return info;
  }
  return { reason: "", metadata: {} };
}

// fields yields [field number, value] of a protobuf message's
// length-delimited fields (strings, bytes, messages); others are skipped.
function* fields(buf) {
  let i = 0;
  const varint = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const b = buf[i++];
      value += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return value;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const wire = key % 8;
    if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const n = varint();
      yield [Math.floor(key / 8), buf.subarray(i, i + n)];
      i += n;
    } else return;
  }
}

function describe(err) {
  return err.code !== undefined ? `${codeNames[err.code] ?? err.code}: ${err.details}` : err.message;
}

try {
  const action = await download();
  if (args.follow) {
    process.stderr.write(`download.mjs: action finished${action?.status ? `: ${action.status}` : ""}\n`);
  }
} catch (err) {
  fail(describe(err));
} finally {
  client.close();
}

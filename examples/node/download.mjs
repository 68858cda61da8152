#!/usr/bin/env node
// Downloads one CodeArts Build action log from buildlog over gRPC and writes
// it to stdout, using @grpc/grpc-js and the API's .proto file, loaded at run
// time with @grpc/proto-loader (no generated code).
//
//   npm ci
//   node download.mjs --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log
//
// The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
// code and message to stderr and exits 1.
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const usage = `usage: node download.mjs --addr HOST:PORT --record-id ID --task-name NAME [--token TOKEN] [--log-level info|debug]

Streams the action log to stdout. The token defaults to $BUILDLOG_TOKEN.`;

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
const call = client.DownloadTaskLog(
  { record_id: args["record-id"], task_name: args["task-name"], log_level: logLevel },
  metadata,
);

const codeNames = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

try {
  let expected = 0n;
  for await (const msg of call) {
    // Offsets are contiguous; a gap would mean a corrupted log.
    if (BigInt(msg.offset) !== expected && msg.data.length > 0) {
      throw new Error(`chunk at offset ${msg.offset}, expected ${expected}`);
    }
    expected += BigInt(msg.data.length);
    if (!process.stdout.write(msg.data)) {
      await new Promise((resolve) => process.stdout.once("drain", resolve));
    }
  }
} catch (err) {
  call.cancel();
  const message = err.code !== undefined ? `${codeNames[err.code] ?? err.code}: ${err.details}` : err.message;
  fail(message);
} finally {
  client.close();
}

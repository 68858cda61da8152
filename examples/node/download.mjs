#!/usr/bin/env node
// Downloads one CodeArts Build action log from buildlog over gRPC and writes
// it to stdout, with the TypeScript client library (clients/typescript),
// which resumes after an ending the server means to be resumed and checks
// that every byte came exactly once.
//
//   (cd clients/typescript && npm ci)
//   node examples/node/download.mjs --addr localhost:9090 --record-id ID --task-name stage1 --token T > stage1.log
//   node examples/node/download.mjs --addr localhost:9090 --record-id ID --task-name stage2 --token T --follow
//
// The token may also come from BUILDLOG_TOKEN. On error it prints the gRPC
// code and message to stderr and exits 1.
import { parseArgs } from "node:util";
import { createBuildLogClient } from "../../clients/typescript/dist/index.js";

const usage = `usage: node download.mjs --addr HOST:PORT --record-id ID --task-name NAME [--token TOKEN] [--log-level info|debug] [--follow]

Streams the action log to stdout. The token defaults to $BUILDLOG_TOKEN.
With --follow (-f) it follows the log until the action finished and prints
the action's final status on stderr.`;

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
} catch (e) {
  fail(`${e.message}\n${usage}`);
}
if (args.help) {
  process.stdout.write(usage + "\n");
  process.exit(0);
}
if (!args.addr || !args["record-id"] || !args["task-name"]) fail(usage);

const client = createBuildLogClient({ address: args.addr, token: args.token });
const req = { recordId: args["record-id"], taskName: args["task-name"], logLevel: args["log-level"] };
try {
  const log = args.follow ? client.follow(req) : client.download(req);
  const result = await log.writeTo(process.stdout);
  if (args.follow) process.stderr.write(`download.mjs: action finished: ${result.action?.status ?? "unknown"}\n`);
} catch (e) {
  fail(e.message); // "NOT_FOUND (UPSTREAM_NOT_FOUND): The build record or its action does not exist"
} finally {
  client.close();
}

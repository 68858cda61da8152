// Tests of the TypeScript client against the real buildlogd of the test bed
// (clients/testbed): run `npm test` after `npm ci` (which builds dist/).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";
import { Writable } from "node:stream";
import { ConnectError, createRouterTransport } from "@connectrpc/connect";
import { createBuildLogClient, BuildLogError, BuildLogService, Code, Reason, logKey, LogLevel } from "../dist/index.js";
import { ErrorInfoSchema } from "../dist/gen/google/rpc/error_details_pb.js";
import { startTestbed, control, newRecordId } from "./testbed.mjs";

const MiB = 1 << 20;
let tb, ctl, client;

before(async () => {
  tb = await startTestbed();
  ctl = control(tb.control);
  // Short pauses keep the tests quick; the budget is the default's.
  client = createBuildLogClient({ address: tb.grpc_addr, token: tb.token, minBackoffMs: 20, maxBackoffMs: 500 });
});

after(async () => {
  client?.close();
  await tb?.stop();
});

// Collects a download's chunks, recording every reconnect.
async function collect(log) {
  const chunks = [];
  for await (const c of log) chunks.push(c);
  return Buffer.concat(chunks);
}

// Starts consuming a download and resolves `first` once `atLeast` bytes came.
function consume(log, atLeast) {
  const chunks = [];
  let n = 0;
  let reached;
  const first = new Promise((resolve) => (reached = resolve));
  const done = (async () => {
    for await (const c of log) {
      chunks.push(c);
      n += c.length;
      if (n >= atLeast) reached();
    }
    reached();
    return Buffer.concat(chunks);
  })();
  done.catch(() => reached());
  return { first, done };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("the download completed; an error was expected");
}

test("a plain download is byte-identical to the upstream's log, with its metadata", async () => {
  const id = newRecordId();
  const size = 3 * MiB + 12345; // several chunks and a partial one
  await ctl.addLog(id, "stage1", size);
  const want = await ctl.content(id, "stage1");
  assert.equal(want.length, size);

  const log = client.download({ recordId: id, taskName: "stage1" });
  const md = await log.metadata(); // before any byte is read
  assert.equal(md.totalSize, size);
  assert.ok(md.fileName.length > 0);
  assert.ok(md.contentType.length > 0);
  const got = await collect(log);
  assert.ok(got.equals(want), "the bytes differ from /content");
  assert.equal(log.result.written, size);
  assert.equal(log.result.calls, 1);
});

test("a cut buildlogd cannot resume itself is resumed by the library from resumeOffset", async () => {
  const id = newRecordId();
  const size = 2 * MiB + 777;
  await ctl.addLog(id, "stage1", size);
  // buildlogd resumes one cut itself (--upstream-max-resumes 1): the second
  // ends its stream with UNAVAILABLE / UPSTREAM_INTERRUPTED and resumeOffset.
  await ctl.fault({ record_id: id, cut_after: 300_000, times: 2 });
  const reconnects = [];
  const log = client.download({ recordId: id, taskName: "stage1" }, { onReconnect: (r) => reconnects.push(r) });
  const got = await collect(log);
  assert.ok(got.equals(await ctl.content(id, "stage1")), "the bytes differ from /content");
  assert.equal(reconnects.length, 1, "one resumption");
  const [r] = reconnects;
  assert.equal(r.error.code, Code.Unavailable);
  assert.equal(r.error.reason, "UPSTREAM_INTERRUPTED");
  assert.equal(r.error.domain, "buildlog");
  assert.equal(r.offset, r.error.resumeOffset);
  assert.ok(r.offset > 0 && r.offset < size, `resumed from ${r.offset}`);
  assert.equal(r.failures, 0, "the cut call made progress");
  assert.equal(log.result.calls, 2);
  assert.equal(log.result.written, size);
});

test("a download from an offset > 0, with and without a limit", async () => {
  const id = newRecordId();
  const size = MiB + 4321;
  await ctl.addLog(id, "stage1", size);
  const want = await ctl.content(id, "stage1");

  const tail = client.download({ recordId: id, taskName: "stage1", offset: 700_001 });
  assert.ok((await collect(tail)).equals(want.subarray(700_001)));
  assert.equal(tail.result.written, size - 700_001);

  const mid = client.download({ recordId: id, taskName: "stage1", offset: 123n, limit: 456_789 });
  assert.ok((await collect(mid)).equals(want.subarray(123, 123 + 456_789)));

  const end = client.download({ recordId: id, taskName: "stage1", offset: size });
  assert.equal((await collect(end)).length, 0);
  assert.equal((await end.metadata()).totalSize, size);

  const past = await rejection(client.download({ recordId: id, taskName: "stage1", offset: size + 1 }).bytes());
  assert.ok(past instanceof BuildLogError);
  assert.equal(past.code, Code.OutOfRange);
  assert.equal(past.reason, Reason.OFFSET_OUT_OF_RANGE);
  assert.equal(past.metadata.logSize, String(size));
});

test("the debug level is another log", async () => {
  const id = newRecordId();
  await ctl.addLog(id, "stage2", 50_000);
  const got = await client.download({ recordId: id, taskName: "stage2", logLevel: "debug" }).bytes();
  const want = await ctl.content(id, "stage2", "LOG_LEVEL_DEBUG");
  assert.ok(Buffer.from(got).equals(want));
  assert.ok(!want.equals(await ctl.content(id, "stage2", "LOG_LEVEL_INFO")), "the test needs the levels to differ");
});

test("a refused token is a BuildLogError UNAUTHENTICATED with its reason, not retried", async () => {
  const id = newRecordId();
  await ctl.addLog(id, "stage1", 1000);
  const err = await rejection(client.download({ recordId: id, taskName: "stage1" }, { token: tb.bad_token }).bytes());
  assert.ok(err instanceof BuildLogError, String(err));
  assert.equal(err.code, Code.Unauthenticated);
  assert.equal(err.codeName, "UNAUTHENTICATED");
  assert.equal(err.reason, "UPSTREAM_UNAUTHENTICATED");
  assert.equal(err.domain, "buildlog");
  assert.equal(err.metadata.httpStatus, "401");
  assert.ok(err.message.startsWith("UNAUTHENTICATED (UPSTREAM_UNAUTHENTICATED): "), err.message);
  assert.ok(!err.message.includes(tb.bad_token), "the message never holds the token");
  assert.equal(err.retryable, false);
  assert.deepEqual(err.result, { written: 0, calls: 1 });

  // No token at all.
  const anon = createBuildLogClient({ address: tb.grpc_addr });
  try {
    const missing = await rejection(anon.download({ recordId: id, taskName: "stage1" }).bytes());
    assert.equal(missing.code, Code.Unauthenticated);
    assert.equal(missing.reason, Reason.MISSING_TOKEN);
  } finally {
    anon.close();
  }
});

test("a log that does not exist is NOT_FOUND; an invalid request lists its violations", async () => {
  const err = await rejection(client.download({ recordId: newRecordId(), taskName: "stage1" }).bytes());
  assert.ok(err instanceof BuildLogError);
  assert.equal(err.code, Code.NotFound);
  assert.equal(err.reason, Reason.UPSTREAM_NOT_FOUND);
  assert.equal(err.metadata.httpStatus, "404");
  assert.equal(err.result.calls, 1);

  const bad = await rejection(client.download({ recordId: "not/a-record", taskName: "stage1" }).bytes());
  assert.equal(bad.code, Code.InvalidArgument);
  assert.equal(bad.reason, Reason.INVALID_REQUEST);
  assert.equal(bad.violations[0].field, "record_id");
});

test("the retry budget ends with an error, never a short log", async () => {
  const id = newRecordId();
  const size = 2 * MiB;
  await ctl.addLog(id, "stage1", size);
  // Two cuts (the second reaches the client, after some bytes), then the
  // upstream answers 503 to every request: no call makes progress again.
  await ctl.fault({ record_id: id, cut_after: 200_000, times: 2 });
  await ctl.fault({ record_id: id, status: 503, code: "CB.00000503", message: "down for the test", times: 1000 });
  const chunks = [];
  const reconnects = [];
  const log = client.download({ recordId: id, taskName: "stage1" }, { maxRetries: 2, minBackoffMs: 1, maxBackoffMs: 5, onReconnect: (r) => reconnects.push(r) });
  const err = await rejection((async () => {
    for await (const c of log) chunks.push(c);
  })());
  assert.ok(err instanceof BuildLogError, String(err));
  assert.equal(err.code, Code.Unavailable);
  assert.equal(err.reason, "UPSTREAM_UNAVAILABLE");
  const got = Buffer.concat(chunks);
  assert.ok(got.length > 0 && got.length < size, `${got.length} bytes`);
  assert.equal(err.result.written, got.length);
  assert.ok(got.equals((await ctl.content(id, "stage1")).subarray(0, got.length)), "what came is a correct prefix");
  // 1 call that made progress, then 1 + maxRetries calls without.
  assert.equal(err.result.calls, 4);
  assert.deepEqual(reconnects.map((r) => r.failures), [0, 1, 2]);
});

test("throttling is waited out for at least the RetryInfo delay, then completed", async () => {
  const id = newRecordId();
  await ctl.addLog(id, "stage1", 100_000);
  await ctl.fault({ record_id: id, status: 429, code: "APIGW.0308", message: "throttled for the test", times: 1 });
  const reconnects = [];
  const got = await collect(client.download({ recordId: id, taskName: "stage1" }, { onReconnect: (r) => reconnects.push(r) }));
  assert.ok(got.equals(await ctl.content(id, "stage1")));
  assert.equal(reconnects.length, 1);
  const [r] = reconnects;
  assert.equal(r.error.code, Code.ResourceExhausted);
  assert.equal(r.error.reason, Reason.UPSTREAM_THROTTLED);
  assert.ok(r.error.retryDelayMs > 0, "a RetryInfo");
  assert.ok(r.delayMs >= r.error.retryDelayMs, `${r.delayMs} ms >= ${r.error.retryDelayMs} ms`);
});

async function followAcrossRestart(t, graceful) {
  const id = newRecordId();
  await ctl.addAction(id, "stage1", 100_000);
  const reconnects = [];
  const actions = [];
  const log = client.follow(
    { recordId: id, taskName: "stage1" },
    { onReconnect: (r) => reconnects.push(r), onAction: (a) => actions.push(a) },
  );
  const run = consume(log, 100_000);
  await run.first; // the follow has the bytes written so far
  await ctl.grow(id, "stage1", 50_000);
  await ctl.restart(graceful, 300); // returns once buildlogd serves again
  await ctl.grow(id, "stage1", 400_000);
  await ctl.finish(id, "stage1");
  const got = await run.done;
  const want = await ctl.content(id, "stage1");
  assert.equal(want.length, 550_000);
  assert.equal(got.length, want.length, "every byte exactly once");
  assert.ok(got.equals(want), "the bytes differ from /content");
  assert.ok(reconnects.length >= 1, "the follow reconnected");
  assert.ok(log.result.calls >= 2);
  assert.equal(log.result.written, want.length);
  assert.equal(log.result.action.finished, true);
  assert.equal(actions[0].finished, false);
  assert.equal(actions.at(-1).finished, true);
  assert.ok(actions.length <= 3, `each state once: ${JSON.stringify(actions)}`);
  t.diagnostic(`${log.result.calls} calls; reconnects: ${reconnects.map((r) => `${r.error.codeName}/${r.error.reason} from ${r.offset} after ${r.delayMs} ms`).join(", ")}`);
  return reconnects;
}

test("a follow rides out a graceful buildlogd restart, every byte exactly once", async (t) => {
  const reconnects = await followAcrossRestart(t, true);
  // buildlogd ends followed streams as it shuts down, with resumeOffset.
  assert.equal(reconnects[0].error.reason, Reason.FOLLOW_INTERRUPTED);
  assert.equal(reconnects[0].failures, 0);
  assert.ok(reconnects[0].error.resumeOffset >= 100_000);
  // While it is down, calls are refused and retried with backoff.
  for (const r of reconnects.slice(1)) assert.equal(r.error.code, Code.Unavailable);
});

test("a follow rides out a killed buildlogd, every byte exactly once", async (t) => {
  const reconnects = await followAcrossRestart(t, false);
  for (const r of reconnects) assert.equal(r.error.code, Code.Unavailable, r.error.message);
  assert.equal(reconnects[0].error.reason, Reason.CLIENT_CONNECTION_FAILED);
});

test("a follow goes on through the server's follow time limit (FOLLOW_TIME_LIMIT), every byte exactly once", async (t) => {
  // A test bed of its own: its buildlogd ends each followed call after 300 ms.
  const short = await startTestbed(["--follow-max-duration", "300ms"]);
  const own = createBuildLogClient({ address: short.grpc_addr, token: short.token, minBackoffMs: 20, maxBackoffMs: 500 });
  try {
    const sctl = control(short.control);
    const id = newRecordId();
    await sctl.addAction(id, "stage1", 50_000);
    const reconnects = [];
    const actions = [];
    const log = own.follow(
      { recordId: id, taskName: "stage1" },
      { onReconnect: (r) => reconnects.push(r), onAction: (a) => actions.push(a) },
    );
    const run = consume(log, 50_000);
    await run.first;
    // Grow the log over ~1.2 s, several time limits' worth, then finish it.
    let size = 50_000;
    for (let i = 0; i < 6; i++) {
      await delay(200);
      size += 30_000 + i * 7_001;
      await sctl.grow(id, "stage1", 30_000 + i * 7_001);
    }
    await delay(200);
    await sctl.finish(id, "stage1");
    const got = await run.done; // ends normally: a rejection fails the test
    const want = await sctl.content(id, "stage1");
    assert.equal(want.length, size);
    assert.equal(got.length, want.length, "every byte exactly once");
    assert.ok(got.equals(want), "the bytes differ from /content");
    assert.equal(log.result.written, want.length);
    assert.equal(log.result.action.finished, true);
    assert.equal(actions.at(-1).finished, true);

    const limits = reconnects.filter((r) => r.error.reason === Reason.FOLLOW_TIME_LIMIT);
    assert.ok(limits.length >= 2, `at least two time limits: ${reconnects.length} reconnects`);
    let last = 0;
    for (const r of reconnects) {
      assert.equal(r.error.reason, Reason.FOLLOW_TIME_LIMIT, r.error.message);
      assert.equal(r.error.code, Code.DeadlineExceeded);
      assert.equal(r.error.codeName, "DEADLINE_EXCEEDED");
      assert.equal(r.error.domain, "buildlog");
      assert.equal(r.error.retryable, true);
      assert.equal(r.offset, r.error.resumeOffset, "the next call asks for resumeOffset");
      assert.ok(r.offset >= last && r.offset <= size, `resumeOffset ${r.offset} after ${last}`);
      assert.equal(r.failures, 0, "a time limit is progress, not a failure");
      last = r.offset;
    }
    assert.equal(log.result.calls, reconnects.length + 1);
    t.diagnostic(`${log.result.calls} calls; resumed from ${reconnects.map((r) => r.offset).join(", ")}`);
  } finally {
    own.close();
    await short.stop();
  }
});

test("an AbortSignal ends a follow with CANCELED, and breaking out cancels the call", async () => {
  const id = newRecordId();
  await ctl.addAction(id, "stage1", 10_000);
  const ac = new AbortController();
  const log = client.follow({ recordId: id, taskName: "stage1" }, { signal: ac.signal });
  const run = consume(log, 10_000);
  await run.first;
  ac.abort();
  const err = await rejection(run.done);
  assert.ok(err instanceof BuildLogError, String(err));
  assert.equal(err.code, Code.Canceled);
  assert.equal(err.reason, Reason.CLIENT_ABORTED);
  assert.equal(err.result.written, 10_000);

  let n = 0;
  for await (const c of client.follow({ recordId: id, taskName: "stage1" })) {
    n += c.length;
    break;
  }
  assert.ok(n > 0);
  // The client is still usable after both.
  await ctl.finish(id, "stage1");
  assert.equal((await client.follow({ recordId: id, taskName: "stage1" }).bytes()).length, 10_000);
});

test("writeTo writes to a Node stream and waits for it to drain", async () => {
  const { Writable } = await import("node:stream");
  const id = newRecordId();
  await ctl.addLog(id, "stage1", MiB);
  const parts = [];
  let drains = 0;
  const slow = new Writable({
    highWaterMark: 64 * 1024,
    write(chunk, _enc, cb) {
      parts.push(Buffer.from(chunk));
      setImmediate(cb);
    },
  });
  slow.on("drain", () => drains++);
  const res = await client.download({ recordId: id, taskName: "stage1" }).writeTo(slow);
  assert.equal(res.written, MiB);
  assert.ok(Buffer.concat(parts).equals(await ctl.content(id, "stage1")));
  assert.ok(drains > 0, "backpressure was honoured");

  const broken = new Writable({ write: (_c, _e, cb) => cb(new Error("disk full")) });
  broken.on("error", () => {});
  const err = await rejection(client.download({ recordId: id, taskName: "stage1" }).writeTo(broken));
  assert.equal(err.reason, Reason.CLIENT_WRITE_FAILED);
  assert.match(err.message, /disk full/);
});

test("logKey escapes as Go's url.QueryEscape", () => {
  assert.equal(logKey("a b/c", "stage1", LogLevel.INFO), "a+b%2Fc/stage1/INFO");
  assert.equal(logKey("x!'()*~", "s", LogLevel.DEBUG), "x%21%27%28%29%2A~/s/DEBUG");
  assert.equal(logKey("x", "s", LogLevel.UNSPECIFIED), "x/s/INFO");
});

// A writable that keeps nothing.
const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

test("a download that failed stays failed: metadata's error again from writeTo, bytes, the loop and metadata", async () => {
  const id = newRecordId(); // no such log: NOT_FOUND
  const reads = {
    writeTo: (l) => l.writeTo(sink()),
    bytes: (l) => l.bytes(),
    loop: (l) => collect(l),
    metadata: (l) => l.metadata(),
  };
  for (const [name, read] of Object.entries(reads)) {
    const log = client.download({ recordId: id, taskName: "stage1" });
    const first = await rejection(log.metadata());
    assert.equal(first.code, Code.NotFound, first.message);
    const again = await rejection(read(log));
    assert.equal(again, first, `${name} after metadata() failed: ${again}`);
    assert.equal(log.result.written, 0);
  }
});

test("client.close() ends the downloads still open with CANCELED, CLIENT_CLOSED, not reconnected; and later ones", async () => {
  const own = createBuildLogClient({ address: tb.grpc_addr, token: tb.token, minBackoffMs: 20, maxBackoffMs: 500 });
  const id = newRecordId();
  await ctl.addAction(id, "stage1", 10_000);
  const reconnects = [];
  const log = own.follow({ recordId: id, taskName: "stage1" }, { onReconnect: (r) => reconnects.push(r) });
  const run = consume(log, 10_000);
  await run.first;
  own.close();
  // Were the follow reconnected, it would complete once the action finishes.
  const finish = setTimeout(() => ctl.finish(id, "stage1").catch(() => {}), 1500);
  try {
    const err = await rejection(run.done);
    assert.ok(err instanceof BuildLogError, String(err));
    assert.equal(err.code, Code.Canceled);
    assert.equal(err.reason, Reason.CLIENT_CLOSED);
    assert.match(err.message, /client was closed/);
    assert.equal(err.result.written, 10_000);
    assert.deepEqual(reconnects, []);
    const late = await rejection(own.download({ recordId: id, taskName: "stage1" }).bytes());
    assert.equal(late.reason, Reason.CLIENT_CLOSED);
    assert.equal(late.result.calls, 0);
  } finally {
    clearTimeout(finish);
    await ctl.finish(id, "stage1");
  }
});

test("LogDownload.close() ends a call metadata() opened and nothing iterated; later reads are CANCELED", async () => {
  const id = newRecordId();
  await ctl.addAction(id, "stage1", 1000);
  const upstreamRequests = async () => (await ctl.stats()).upstream_requests;
  const log = client.follow({ recordId: id, taskName: "stage1" });
  const md = await log.metadata();
  // The test needs the open follow to poll the upstream (every 100 ms).
  let before = await upstreamRequests();
  await delay(500);
  assert.ok((await upstreamRequests()) > before, "the open follow polls");
  log.close();
  log.close(); // idempotent
  await delay(200);
  before = await upstreamRequests();
  await delay(600);
  assert.equal(await upstreamRequests(), before, "the closed follow polls no more");
  const err = await rejection(log.bytes());
  assert.equal(err.code, Code.Canceled);
  assert.equal(err.reason, Reason.CLIENT_CLOSED);
  assert.equal(await log.metadata(), md, "the metadata that came is kept");
  await ctl.finish(id, "stage1");

  // Closed before it started: no call at all. Closed after it completed: nothing changes.
  const unstarted = client.download({ recordId: id, taskName: "stage1" });
  await unstarted[Symbol.asyncDispose]();
  assert.equal((await rejection(unstarted.metadata())).reason, Reason.CLIENT_CLOSED);
  assert.equal(unstarted.result.calls, 0);
  const done = client.download({ recordId: id, taskName: "stage1" });
  assert.equal((await done.bytes()).length, 1000);
  done.close();
  assert.equal((await done.metadata()).totalSize, 1000);
});

test("a negative offset or limit is a RangeError, not the whole log", () => {
  const r = { recordId: newRecordId(), taskName: "stage1" };
  assert.throws(() => client.download({ ...r, limit: -1 }), RangeError);
  assert.throws(() => client.download({ ...r, limit: -5n }), RangeError);
  assert.throws(() => client.follow({ ...r, offset: -1 }), RangeError);
  assert.throws(() => client.download({ ...r, offset: 1.5 }), TypeError);
});

// A scripted buildlogd: calls[i] is the handler of the i-th call (the last
// one for any further call), an async generator of response messages.
function scripted(calls, options = {}) {
  const reqs = [];
  const transport = createRouterTransport(({ service }) => {
    service(BuildLogService, {
      async *downloadTaskLog(req) {
        const call = calls[Math.min(reqs.length, calls.length - 1)];
        reqs.push(req);
        yield* call(req);
      },
    });
  });
  return { client: createBuildLogClient({ transport, minBackoffMs: 20, maxBackoffMs: 40, ...options }), reqs };
}
const meta = (totalSize) => ({ contentType: "text/plain", fileName: "x.log", requestId: "", ...(totalSize === undefined ? {} : { totalSize: BigInt(totalSize) }) });
const chunk = (offset, n, extra = {}) => ({ offset: BigInt(offset), data: new Uint8Array(n).fill(offset % 251), ...extra });
const running = { finished: false, status: "running", finishTime: "" };
const finished = { finished: true, status: "success", finishTime: "2024-01-01 00:00:00" };
const serverError = (code, reason, resumeOffset) =>
  new ConnectError("ended for the test", code, undefined, [
    { desc: ErrorInfoSchema, value: { reason, domain: "buildlog", metadata: { resumeOffset: String(resumeOffset) } } },
  ]);
const cutAt = (n) => serverError(Code.Unavailable, "UPSTREAM_INTERRUPTED", n);

test("after a resume the log's size is the one any call gave: a short log is an error", async () => {
  // The first call: 50 of 100 bytes, then a cut to resume from 50.
  const first = async function* () {
    yield chunk(0, 50, { metadata: meta(100) });
    throw cutAt(50);
  };
  const cases = {
    "no message": async function* () {},
    "no total_size": async function* () {
      yield chunk(50, 10, { metadata: meta(undefined) });
    },
    "another total_size": async function* () {
      yield chunk(50, 10, { metadata: meta(60) });
    },
  };
  const want = { "no message": /without a message/, "no total_size": /range ends at 100/, "another total_size": /100 bytes long and a resumed call says 60/ };
  for (const [name, second] of Object.entries(cases)) {
    const { client: c } = scripted([first, second]);
    const err = await rejection(c.download({ recordId: "r", taskName: "stage1" }).bytes());
    assert.ok(err instanceof BuildLogError, `${name}: ${err}`);
    assert.equal(err.code, Code.DataLoss, `${name}: ${err.message}`);
    assert.equal(err.reason, Reason.CLIENT_PROTOCOL_ERROR);
    assert.match(err.message, want[name], name);
    assert.equal(err.result.calls, 2);
  }
  // The same size again, and the rest: complete.
  const { client: ok } = scripted([first, async function* () {
    yield chunk(50, 50, { metadata: meta(100) });
  }]);
  const log = ok.download({ recordId: "r", taskName: "stage1" });
  assert.equal((await log.bytes()).length, 100);
  assert.equal(log.result.calls, 2);
  // A first call that ends OK without a message.
  const { client: empty } = scripted([async function* () {}]);
  assert.equal((await rejection(empty.download({ recordId: "r", taskName: "stage1" }).bytes())).reason, Reason.CLIENT_PROTOCOL_ERROR);
});

test("a follow's size, unknown while the action runs, is held to once the action finished", async () => {
  const interrupted = (n) => serverError(Code.Unavailable, Reason.FOLLOW_INTERRUPTED, n);
  // Running at first (no size), finished on the resumed call: complete.
  const { client: grows } = scripted([
    async function* () {
      yield chunk(0, 50, { metadata: meta(undefined), action: running });
      throw interrupted(50);
    },
    async function* () {
      yield chunk(50, 30, { metadata: meta(80), action: finished });
    },
  ]);
  const log = grows.follow({ recordId: "r", taskName: "stage1" });
  assert.equal((await log.bytes()).length, 80);
  assert.equal(log.result.action.finished, true);

  // Finished from the start (size 100): a resumed call may not end short of
  // it, nor give another size.
  const firstFinished = async function* () {
    yield chunk(0, 50, { metadata: meta(100), action: finished });
    throw cutAt(50);
  };
  for (const [second, want] of [
    [async function* () { yield chunk(50, 10, { metadata: meta(undefined), action: finished }); }, /range ends at 100/],
    [async function* () { yield chunk(50, 70, { metadata: meta(120), action: finished }); }, /100 bytes long and a resumed call says 120/],
  ]) {
    const { client: c } = scripted([firstFinished, second]);
    const err = await rejection(c.follow({ recordId: "r", taskName: "stage1" }).bytes());
    assert.equal(err.reason, Reason.CLIENT_PROTOCOL_ERROR, err.message);
    assert.match(err.message, want);
  }
});

test("a follow the server ends after one message reconnects after at least minBackoffMs", async () => {
  const reconnects = [];
  let calls = 0;
  const { client: c } = scripted([
    async function* () {
      calls++;
      yield chunk(0, 0, { metadata: meta(undefined), action: running });
      if (calls < 3) throw serverError(Code.Unavailable, Reason.FOLLOW_INTERRUPTED, 0);
      yield chunk(0, 0, { action: finished });
    },
  ], { minBackoffMs: 60, maxBackoffMs: 100 });
  const started = Date.now();
  const log = c.follow({ recordId: "r", taskName: "stage1" }, { onReconnect: (r) => reconnects.push(r) });
  assert.equal((await log.bytes()).length, 0);
  assert.equal(log.result.calls, 3);
  assert.deepEqual(reconnects.map((r) => r.failures), [0, 0], "still progress");
  for (const r of reconnects) assert.ok(r.delayMs >= 60, `paused ${r.delayMs} ms`);
  assert.ok(Date.now() - started >= 110, `took ${Date.now() - started} ms`);
});

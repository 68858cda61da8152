import { create, equals } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager, type GrpcTransportOptions } from "@connectrpc/connect-node";
import type * as http2 from "node:http2";
import {
  ActionStateSchema,
  BuildLogService,
  DownloadTaskLogRequestSchema,
  LogLevel,
  type ActionState as PbActionState,
  type DownloadTaskLogResponse,
} from "./gen/buildlog/v1/buildlog_pb.js";
import { BuildLogError, Reason, MetadataKey, fromCallError } from "./errors.js";
import type {
  ActionState,
  ClientOptions,
  DownloadOptions,
  DownloadRequest,
  DownloadResult,
  LogMetadata,
  Reconnect,
} from "./types.js";

/** The request metadata key of the caller's IAM token. */
export const TOKEN_METADATA_KEY = "x-auth-token";
/** The request metadata key naming the log a call reads, for proxies to route on ({@link logKey}). */
export const LOG_KEY_METADATA_KEY = "buildlog-log-key";

/**
 * Default HTTP/2 receive windows: how many bytes the server may send ahead
 * of what the caller has read, per call and per connection (see
 * {@link ClientOptions.streamWindowBytes}).
 */
export const DEFAULT_STREAM_WINDOW_BYTES = 4 << 20;
export const DEFAULT_CONNECTION_WINDOW_BYTES = 16 << 20;

/** Defaults of the retry options, as the Go client's. */
export const DEFAULT_MAX_RETRIES = 10;
export const DEFAULT_MIN_BACKOFF_MS = 100;
export const DEFAULT_MAX_BACKOFF_MS = 5000;

/**
 * A download in progress or about to start: an async iterable of the log's
 * bytes, in order, each exactly once, whatever reconnects it took. The first
 * call is made when iteration (or {@link LogDownload.metadata}) starts.
 *
 * Iteration ends normally only once the whole range was delivered (and, for
 * a followed download, the action finished); any other ending throws a
 * {@link BuildLogError}, and so does every later read of the download
 * (`metadata()` before one came, `next()`, `writeTo`, `bytes`): a download
 * that failed never looks complete. Breaking out of the loop closes the
 * download (see {@link LogDownload.close}).
 */
export interface LogDownload extends AsyncIterable<Uint8Array>, AsyncDisposable {
  /**
   * Resolves with the metadata of the first call's first message (content
   * type, file name, total size when known), starting the download if it has
   * not started; rejects with the download's error if it ends before one
   * (and then every later read rejects with the same error). The bytes read
   * meanwhile are kept for the iteration.
   */
  metadata(): Promise<LogMetadata>;
  /**
   * Ends the download: cancels its open call (such as one that
   * {@link LogDownload.metadata} opened and nothing iterated, which on a
   * follow would keep the server polling the upstream) and makes no more.
   * Every later read, and a read waiting now, rejects with a BuildLogError
   * CANCELED, reason CLIENT_CLOSED (`metadata()` still resolves if the
   * metadata had come). Idempotent; does nothing once the download ended,
   * completed or failed. `[Symbol.asyncDispose]` does the same, for
   * `await using` where the runtime and compiler support it.
   */
  close(): void;
  /** How far the download got so far; final once iteration ended. */
  readonly result: DownloadResult;
  /**
   * Writes the log to a Node writable stream (a file, `process.stdout`, an
   * HTTP response), waiting for it to drain as it asks, and resolves with the
   * result once the range is complete. It does not end the stream. A failure
   * of the stream ends the download with a BuildLogError UNKNOWN,
   * CLIENT_WRITE_FAILED, whose cause is the stream's error.
   */
  writeTo(w: NodeJS.WritableStream): Promise<DownloadResult>;
  /** Collects the whole range in memory (for small logs and tests). */
  bytes(): Promise<Uint8Array>;
}

/** A client of buildlogd's gRPC API; make one with {@link createBuildLogClient}. */
export interface BuildLogClient {
  /**
   * Downloads the range of the log that `req` asks for, with as many
   * DownloadTaskLog calls as it takes: after an ending that
   * {@link BuildLogError.retryable} accepts (the server's upstream cut, a
   * server restart, throttling) it calls again from the error's resumeOffset
   * (or the bytes received) with the remaining limit, pausing with backoff
   * after calls that made no progress, and gives up after `maxRetries` of
   * them in a row (after the server ended a followed call, it still pauses
   * `minBackoffMs`). Each message's offset must be the next one, a call that
   * ends OK must have sent a message and delivered the whole range when the
   * log's size is known (from any call: the size is kept across
   * reconnects), and a finished log's size may not change from call to call:
   * else the download ends with a BuildLogError DATA_LOSS,
   * CLIENT_PROTOCOL_ERROR. A negative offset or limit throws a RangeError.
   *
   * Without `req.follow` this is a snapshot: what the upstream holds now.
   *
   * @example
   * ```ts
   * const log = client.download({ recordId, taskName: "stage1" });
   * for await (const chunk of log) process.stdout.write(chunk);
   * ```
   */
  download(req: DownloadRequest, opts?: DownloadOptions): LogDownload;
  /**
   * Follows the log while its action runs, as `tail -f` does: as
   * {@link BuildLogClient.download} with `follow` on, until the action has
   * finished and its log was delivered in full (or, with a limit, that many
   * bytes). It reconnects after the server's regular endings of a followed
   * call (its follow time limit, its shutdown or restart, a connection's
   * maximum age) without counting them as failures, and rides out a server
   * that is down for a while within the retry budget. `result.action` is
   * then the final state.
   */
  follow(req: DownloadRequest, opts?: DownloadOptions): LogDownload;
  /** The generated connect client, for calls the library does not wrap. */
  readonly service: Client<typeof BuildLogService>;
  /**
   * Closes the client: every download still open ends with a BuildLogError
   * CANCELED, reason CLIENT_CLOSED, and is not reconnected; downloads
   * started later fail the same way; then the client's HTTP/2 connection is
   * closed (a `transport` given in the options is left alone). Idempotent.
   */
  close(): void;
}

/**
 * Makes a client of buildlogd's gRPC API, over HTTP/2 with
 * `@connectrpc/connect-node`'s gRPC transport. One client holds one
 * connection, which its calls share; reconnects after the connection broke
 * open a new one.
 *
 * @example
 * ```ts
 * import { createBuildLogClient } from "@buildlog/client";
 * const client = createBuildLogClient({ address: "localhost:9090", token: process.env.BUILDLOG_TOKEN });
 * const res = await client.download({ recordId, taskName: "stage1" }).writeTo(process.stdout);
 * client.close();
 * ```
 */
export function createBuildLogClient(options: ClientOptions): BuildLogClient {
  let transport = options.transport;
  let session: Http2SessionManager | undefined;
  if (!transport) {
    const baseUrl = toBaseUrl(options.baseUrl ?? options.address);
    const ping = options.pingIntervalMs !== undefined ? { pingIntervalMs: options.pingIntervalMs } : {};
    const streamWindow = options.streamWindowBytes ?? DEFAULT_STREAM_WINDOW_BYTES;
    const nodeOptions = {
      ...options.nodeOptions,
      settings: { initialWindowSize: streamWindow, ...options.nodeOptions?.settings },
    };
    session = new Http2SessionManager(baseUrl, ping, nodeOptions);
    transport = createGrpcTransport({
      baseUrl,
      sessionManager: windowed(session, options.connectionWindowBytes ?? DEFAULT_CONNECTION_WINDOW_BYTES),
    });
  }
  const service = createClient(BuildLogService, transport);
  const state: ClientState = { closed: false, open: new Set() };
  const start = (req: DownloadRequest, opts: DownloadOptions | undefined, follow: boolean): LogDownload =>
    new Download(service, state, options, req, opts ?? {}, follow);
  return {
    service,
    download: (req, opts) => start(req, opts, req.follow ?? false),
    follow: (req, opts) => start(req, opts, true),
    close: () => {
      if (!state.closed) {
        state.closed = true;
        const open = [...state.open];
        state.open.clear();
        for (const stop of open) stop(closedError("the client was closed"));
      }
      session?.abort();
    },
  };
}

/** What a client's downloads share: whether it was closed, and how to stop those open. */
interface ClientState {
  closed: boolean;
  open: Set<(err: BuildLogError) => void>;
}

type SessionManager = NonNullable<GrpcTransportOptions["sessionManager"]>;

// windowed returns m with each of its HTTP/2 connections' receive window
// raised to `bytes` (Node keeps nghttp2's 64 KiB, which a sender fills in
// one round trip; Go's gRPC client grows its windows up to 16 MiB).
function windowed(m: Http2SessionManager, bytes: number): SessionManager {
  const done = new WeakSet<http2.Http2Session>();
  return {
    authority: m.authority,
    async request(method, path, headers, options) {
      const stream = await m.request(method, path, headers, options);
      const s = stream.session;
      if (s && !done.has(s) && bytes > 65535) {
        done.add(s);
        try {
          s.setLocalWindowSize(bytes);
        } catch {
          // a session being closed: its streams fail on their own
        }
      }
      return stream;
    },
    notifyResponseByteRead: (stream) => m.notifyResponseByteRead(stream),
  };
}

function toBaseUrl(address: string | undefined): string {
  if (!address) throw new TypeError("createBuildLogClient: give an address (host:port) or a baseUrl");
  return /^https?:\/\//.test(address) ? address : `http://${address}`;
}

/**
 * The routing key of a log, as the Go client's `api.LogKey`: record id, task
 * name and level (INFO unless DEBUG), query-escaped as Go's
 * url.QueryEscape does and joined by "/".
 */
export function logKey(recordId: string, taskName: string, level: LogLevel): string {
  return `${queryEscape(recordId)}/${queryEscape(taskName)}/${level === LogLevel.DEBUG ? "DEBUG" : "INFO"}`;
}

function queryEscape(s: string): string {
  return encodeURIComponent(s)
    .replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase())
    .replace(/%20/g, "+");
}

function toLogLevel(l: DownloadRequest["logLevel"]): LogLevel {
  if (l === undefined) return LogLevel.UNSPECIFIED;
  if (typeof l === "number") return l;
  switch (l.toLowerCase()) {
    case "info":
      return LogLevel.INFO;
    case "debug":
      return LogLevel.DEBUG;
  }
  throw new TypeError(`logLevel ${JSON.stringify(l)}: use "info" or "debug"`);
}

function toCount(name: string, v: number | bigint | undefined): number {
  if (v === undefined) return 0;
  const n = typeof v === "bigint" ? Number(v) : v;
  if (!Number.isSafeInteger(n)) throw new TypeError(`${name} ${v}: must be a whole number of bytes`);
  if (n < 0) throw new RangeError(`${name} ${v}: must not be negative`);
  return n;
}

function protocolError(message: string): BuildLogError {
  return new BuildLogError({ code: Code.DataLoss, reason: Reason.CLIENT_PROTOCOL_ERROR, message: `the server broke the download protocol: ${message}` });
}

function closedError(message: string): BuildLogError {
  return new BuildLogError({ code: Code.Canceled, reason: Reason.CLIENT_CLOSED, message });
}

function abortError(signal: AbortSignal): BuildLogError {
  const r: unknown = signal.reason;
  const timeout = r instanceof Error && r.name === "TimeoutError";
  return new BuildLogError({
    code: timeout ? Code.DeadlineExceeded : Code.Canceled,
    reason: Reason.CLIENT_ABORTED,
    message: timeout ? "the download's time limit passed" : "the download was aborted",
    cause: r,
  });
}

function toMetadata(m: NonNullable<DownloadTaskLogResponse["metadata"]>): LogMetadata {
  const md: LogMetadata = { contentType: m.contentType, fileName: m.fileName, requestId: m.requestId };
  if (m.totalSize !== undefined) md.totalSize = Number(m.totalSize);
  return md;
}

function toAction(a: PbActionState): ActionState {
  return { finished: a.finished, status: a.status, finishTime: a.finishTime };
}

// followEnded: the server ending a followed call as it does regularly.
function followEnded(e: BuildLogError): boolean {
  return e.reason === Reason.FOLLOW_TIME_LIMIT || e.reason === Reason.FOLLOW_INTERRUPTED;
}

const EMPTY = new Uint8Array(0);

/** The state of one DownloadTaskLog call of a download. */
interface CallState {
  req: ReturnType<typeof create<typeof DownloadTaskLogRequestSchema>>;
  ac: AbortController;
  onStop: () => void;
  next: number; // the offset the next message must have
  finished: boolean; // whether this call reported the action finished
  received: boolean; // whether this call got a message
}

/** One download: the state of its calls, and the iteration over them. */
class Download implements LogDownload {
  readonly #service: Client<typeof BuildLogService>;
  readonly #client: ClientState;
  readonly #recordId: string;
  readonly #taskName: string;
  readonly #level: LogLevel;
  readonly #follow: boolean;
  readonly #offset: number; // where the range starts
  readonly #end: number; // where it ends, -1 for the end of the log
  #pos: number; // where the bytes delivered end
  readonly #res: DownloadResult = { written: 0, calls: 0 };
  #lastAction: PbActionState | undefined;
  readonly #headers: Record<string, string>;
  readonly #opts: Required<Pick<DownloadOptions, "maxRetries" | "minBackoffMs" | "maxBackoffMs">> & DownloadOptions;
  readonly #gen: AsyncGenerator<Uint8Array, void, undefined>;
  #pending: Uint8Array[] = [];
  #iterated = false;
  // The log's size as the calls' metadata gave it, across calls (a resumed
  // call that says nothing of it, or ends early, is still held to it), and
  // whether it is a finished log's: a snapshot's, or a follow's whose action
  // had finished. undefined while none gave it (a followed running action).
  #total: number | undefined;
  #totalFinal = false;
  // Aborted when the download is stopped (#stopError says why): the
  // caller's signal, close(), or the client's close(). It cancels the open
  // call and the pause before a reconnect.
  readonly #stopper = new AbortController();
  #stopError: BuildLogError | undefined;
  #complete = false; // the whole range was delivered
  #error: BuildLogError | undefined; // how the download ended, for every later read

  constructor(service: Client<typeof BuildLogService>, clientState: ClientState, client: ClientOptions, req: DownloadRequest, opts: DownloadOptions, follow: boolean) {
    this.#service = service;
    this.#client = clientState;
    this.#recordId = req.recordId;
    this.#taskName = req.taskName;
    this.#level = toLogLevel(req.logLevel);
    this.#follow = follow;
    this.#offset = toCount("offset", req.offset);
    const limit = toCount("limit", req.limit);
    this.#end = limit > 0 ? this.#offset + limit : -1;
    this.#pos = this.#offset;
    const minBackoffMs = Math.max(opts.minBackoffMs ?? client.minBackoffMs ?? DEFAULT_MIN_BACKOFF_MS, 0);
    this.#opts = {
      ...opts,
      maxRetries: Math.max(opts.maxRetries ?? client.maxRetries ?? DEFAULT_MAX_RETRIES, 0),
      minBackoffMs,
      maxBackoffMs: Math.max(opts.maxBackoffMs ?? client.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS, minBackoffMs),
      onReconnect: opts.onReconnect ?? client.onReconnect,
    };
    const token = opts.token ?? client.token;
    this.#headers = {
      ...(opts.headers ?? {}),
      [LOG_KEY_METADATA_KEY]: logKey(this.#recordId, this.#taskName, this.#level),
      ...(token ? { [TOKEN_METADATA_KEY]: token } : {}),
    };
    this.#gen = this.#run();
  }

  get result(): DownloadResult {
    return { ...this.#res };
  }

  async metadata(): Promise<LogMetadata> {
    while (this.#res.metadata === undefined) {
      const { done, value } = await this.#next();
      if (done) throw protocolError("the stream ended without a message");
      if (value.length > 0) this.#pending.push(value);
    }
    return this.#res.metadata;
  }

  close(): void {
    if (this.#complete || this.#error) return;
    this.#stop(closedError("the download was closed"));
    this.#error ??= this.#fail(this.#stopError!);
    // Ends the generator where it waits (a yield: its finally cancels the
    // call), or after the read in flight, which the abort ends.
    this.#gen.return(undefined).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  // Stops the download with err, unless it ended already.
  #stop(err: BuildLogError): void {
    if (this.#stopError || this.#complete || this.#error) return;
    this.#stopError = err;
    this.#stopper.abort(err);
  }

  // The next step of #gen; once the download failed (or was closed), its
  // error again, however often it is asked.
  async #next(): Promise<IteratorResult<Uint8Array, void>> {
    if (this.#error) throw this.#error;
    let r: IteratorResult<Uint8Array, void>;
    try {
      r = await this.#gen.next();
    } catch (e) {
      throw (this.#error ??= this.#fail(BuildLogError.from(e)));
    }
    if (r.done && !this.#complete) {
      // Only close() ends #gen without completing it or throwing.
      throw (this.#error ??= this.#fail(this.#stopError ?? protocolError("the download ended before its range was complete")));
    }
    return r;
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array, void, undefined> {
    if (this.#iterated) throw new TypeError("a LogDownload can be iterated once");
    this.#iterated = true;
    // A plain iterator over #gen rather than another generator: one
    // layer less per message.
    return {
      next: async () => {
        const p = this.#pending.shift();
        if (p !== undefined) return { done: false, value: p };
        for (;;) {
          const r = await this.#next();
          if (r.done || r.value.length > 0) return r;
        }
      },
      // The caller broke out: close the download, cancelling the open call.
      return: async () => {
        this.close();
        await this.#gen.return(undefined);
        return { done: true, value: undefined };
      },
    };
  }

  async writeTo(w: NodeJS.WritableStream): Promise<DownloadResult> {
    let failed: unknown;
    const onError = (e: unknown) => {
      failed ??= e;
    };
    w.on("error", onError);
    const writeFailed = (cause: unknown) => {
      const err = new BuildLogError({ code: Code.Unknown, reason: Reason.CLIENT_WRITE_FAILED, message: `write the log: ${cause instanceof Error ? cause.message : String(cause)}`, cause });
      err.result = this.result;
      return err;
    };
    try {
      for await (const chunk of this) {
        if (failed !== undefined) throw writeFailed(failed);
        if (!w.write(chunk)) {
          await new Promise<void>((resolve, reject) => {
            const done = () => {
              w.off("drain", done);
              w.off("error", done);
              w.off("close", done);
              if (failed !== undefined) reject(writeFailed(failed));
              else resolve();
            };
            w.on("drain", done);
            w.on("error", done);
            w.on("close", done);
          });
        }
      }
      if (failed !== undefined) throw writeFailed(failed);
      return this.result;
    } finally {
      w.off("error", onError);
    }
  }

  async bytes(): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    let n = 0;
    for await (const c of this) {
      chunks.push(c);
      n += c.length;
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  #fail(err: BuildLogError): BuildLogError {
    err.result = this.result;
    return err;
  }

  // The download: its calls one after the other, in one generator (each
  // generator layer costs a few µs per message).
  async *#run(): AsyncGenerator<Uint8Array, void, undefined> {
    const signal = this.#opts.signal;
    const onAbort = () => this.#stop(abortError(signal!));
    const stop = (err: BuildLogError) => this.#stop(err);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
    if (this.#client.closed) this.#stop(closedError("the client was closed"));
    else this.#client.open.add(stop);
    try {
      let from = this.#offset;
      let failures = 0;
      for (;;) {
        if (this.#stopError) throw this.#fail(this.#stopError);
        const start = this.#pos;
        const c = this.#newCall(from);
        let err: BuildLogError;
        try {
          try {
            const stream = this.#service.downloadTaskLog(c.req, { signal: c.ac.signal, headers: this.#headers });
            for await (const msg of stream) {
              const data = this.#accept(msg, c);
              if (data !== undefined) yield data;
              if (this.#stopError) throw this.#stopError;
            }
          } finally {
            this.#stopper.signal.removeEventListener("abort", c.onStop);
            c.ac.abort(); // a call abandoned for a protocol error, or by the caller, is cancelled
          }
          this.#checkEnd(c);
          this.#complete = true;
          return;
        } catch (e) {
          // A call cancelled because the download was stopped ends with
          // the reason it was stopped, not as a broken connection.
          err = this.#stopError ?? fromCallError(e, false);
        }
        const followEnd = c.received && followEnded(err);
        const progress = this.#pos > start || followEnd;
        if (!err.retryable || this.#opts.maxRetries === 0) throw this.#fail(err);
        if (this.#pos === this.#end) {
          this.#complete = true;
          return; // the call failed after the range's last byte
        }
        from = this.#resumeOffset(err);
        failures = progress ? 0 : failures + 1;
        if (failures > this.#opts.maxRetries) throw this.#fail(err);
        const delayMs = this.#backoff(failures, err, followEnd);
        const r: Reconnect = { error: err, offset: from, delayMs, failures };
        this.#opts.onReconnect?.(r);
        await sleep(delayMs, this.#stopper.signal).catch(() => {
          throw this.#fail(this.#stopError!);
        });
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.#client.open.delete(stop);
    }
  }

  // The state of one DownloadTaskLog call from the log offset `from` (at
  // most #pos).
  #newCall(from: number): CallState {
    const req = create(DownloadTaskLogRequestSchema, {
      recordId: this.#recordId,
      taskName: this.#taskName,
      logLevel: this.#level,
      offset: BigInt(from),
      limit: this.#end >= 0 ? BigInt(this.#end - from) : 0n,
      follow: this.#follow,
    });
    const ac = new AbortController();
    const onStop = () => ac.abort(); // an AbortError: connect resets the stream with CANCEL
    this.#stopper.signal.addEventListener("abort", onStop, { once: true });
    this.#res.calls++;
    return { req, ac, onStop, next: from, finished: false, received: false };
  }

  // Checks one message of call c and returns the bytes of it past #pos, or
  // EMPTY for a first message without new bytes (so that metadata()
  // resolves), or undefined.
  #accept(msg: DownloadTaskLogResponse, c: CallState): Uint8Array | undefined {
    const first = !c.received;
    c.received = true;
    if (msg.metadata) {
      const md = toMetadata(msg.metadata);
      // The action state comes on the same (first) message.
      this.#setTotal(md.totalSize, msg.action?.finished ?? c.finished);
      this.#res.metadata = md;
      this.#opts.onMetadata?.(md);
    }
    if (msg.action) {
      c.finished = msg.action.finished;
      this.#setAction(msg.action);
    }
    let data = msg.data;
    const at = Number(msg.offset);
    if (at !== c.next) throw protocolError(`a message at offset ${at} where ${c.next} was expected`);
    if (this.#end >= 0 && at + data.length > this.#end) {
      throw protocolError(`a message of ${data.length} bytes at offset ${at}, past the range's end at ${this.#end}`);
    }
    if (this.#totalFinal && at + data.length > this.#total!) {
      throw protocolError(`a message of ${data.length} bytes at offset ${at}, past the log's end at ${this.#total}`);
    }
    c.next += data.length;
    const skip = this.#pos - at;
    if (skip > 0) data = data.subarray(Math.min(skip, data.length)); // received before
    if (data.length > 0) {
      this.#pos += data.length;
      this.#res.written = this.#pos - this.#offset;
      return data;
    }
    return first ? EMPTY : undefined;
  }

  // Records the log's size t as a call's metadata gave it (finished: the
  // call reported the action finished). A finished log's size (every
  // snapshot's, and a follow's once the action finished) may not change
  // from call to call, and no log's may shrink: a resumed call that says
  // otherwise is of another log.
  #setTotal(t: number | undefined, finished: boolean): void {
    if (t === undefined) return;
    const known = this.#total;
    if (known !== undefined && (t < known || (this.#totalFinal && t !== known))) {
      throw protocolError(`the log was ${known} bytes long and a resumed call says ${t}`);
    }
    if (!this.#totalFinal) {
      this.#total = t;
      this.#totalFinal = !this.#follow || finished;
    }
  }

  // Checks that call c, which ended OK, completed the range: against the
  // last size any call gave, not only c's.
  #checkEnd(c: CallState): void {
    if (!c.received) throw protocolError("the stream ended OK without a message (the first one carries the log's metadata)");
    if (this.#pos === this.#end) return;
    if (this.#total !== undefined) {
      const end = this.#end >= 0 ? Math.min(this.#total, this.#end) : this.#total;
      if (this.#totalFinal ? this.#pos !== end : this.#pos < end) {
        throw protocolError(`the stream ended OK at offset ${this.#pos}, the range ends at ${end}`);
      }
    }
    if (this.#follow && !c.finished) {
      throw protocolError(`the followed stream ended OK at offset ${this.#pos} before the action finished`);
    }
  }

  #setAction(a: PbActionState): void {
    if (this.#lastAction && equals(ActionStateSchema, this.#lastAction, a)) return;
    this.#lastAction = a;
    const s = toAction(a);
    this.#res.action = s;
    this.#opts.onAction?.(s);
  }

  // Where to go on after err, having delivered up to #pos: the error's
  // resumeOffset, or #pos when it has none.
  #resumeOffset(err: BuildLogError): number {
    const s = err.metadata[MetadataKey.RESUME_OFFSET];
    if (s === undefined) return this.#pos;
    const r = /^\d+$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(r) || r > this.#pos) {
      throw this.#fail(protocolError(`resumeOffset ${JSON.stringify(s)} after ${this.#pos} bytes received (${err.message})`));
    }
    return r;
  }

  // The pause before a reconnect after `failures` calls in a row without
  // progress, and at least the delay err's RetryInfo asks for; after the
  // server ended a followed call (followEnd), at least minBackoffMs, so that
  // a server ending every call at once is not called in a busy loop.
  #backoff(failures: number, err: BuildLogError, followEnd: boolean): number {
    let d = 0;
    if (failures > 0) {
      d = Math.min(this.#opts.maxBackoffMs, this.#opts.minBackoffMs * 2 ** (failures - 1));
      d = d / 2 + Math.random() * (d / 2);
    }
    if (followEnd) d = Math.max(d, this.#opts.minBackoffMs);
    return Math.max(Math.round(d), err.retryDelayMs);
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    if (ms <= 0) return resolve();
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

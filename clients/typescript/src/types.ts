import type { Transport } from "@connectrpc/connect";
import type * as http2 from "node:http2";
import type { LogLevel } from "./gen/buildlog/v1/buildlog_pb.js";
import type { BuildLogError } from "./errors.js";

/**
 * What to download: one build action's log (one task of a build record) and
 * the byte range of it.
 */
export interface DownloadRequest {
  /** The build record ID: 36 characters of [0-9a-z-], such as "7c1f0e0a-2d4b-4c8e-9f3a-5b6d7e8f9a0b". */
  recordId: string;
  /** The build action: "stageN" ("stage1" is the first). */
  taskName: string;
  /**
   * The log's detail level: "info" (the default) or "debug", in any case,
   * or a {@link LogLevel} value.
   */
  logLevel?: LogLevel | "info" | "debug" | "INFO" | "DEBUG";
  /**
   * The byte position to start from; 0 (the default) is the log's beginning.
   * A negative one throws a RangeError (a fraction, a TypeError).
   */
  offset?: number | bigint;
  /**
   * The largest number of bytes to return; 0 or unset: to the end of the
   * log. A negative one throws a RangeError (a fraction, a TypeError).
   */
  limit?: number | bigint;
  /**
   * Follow the log while its action runs, as `tail -f` does (see
   * {@link BuildLogClient.follow}, which sets it).
   */
  follow?: boolean;
}

/** The log's metadata, as the first message of a call carries it. */
export interface LogMetadata {
  /** The log's media type; "application/octet-stream" when the upstream sent none. */
  contentType: string;
  /** A plain file name for the log, such as "<record_id>-<task_name>.log". */
  fileName: string;
  /**
   * The size of the whole log in bytes, when the upstream announced it;
   * undefined on a followed download of an action still running when the
   * call started (its log is still growing).
   */
  totalSize?: number;
  /** The upstream's request id, for support requests to Huawei Cloud; "" when none. */
  requestId: string;
}

/** A followed download's build action state, as the upstream reports it. */
export interface ActionState {
  /** Whether the action has finished, so that its log will not grow. */
  finished: boolean;
  /** The upstream's status word, such as "running", "success" or "failed"; "" when none. */
  status: string;
  /** The upstream's finish time, as it wrote it; "" while the action runs. */
  finishTime: string;
}

/**
 * How far a download got. Complete once the download's iteration ended
 * without error; a {@link BuildLogError} carries one too (`error.result`).
 * The bytes delivered are always the log from the request's offset to
 * offset + written, in order, each exactly once.
 */
export interface DownloadResult {
  /** The number of log bytes delivered. */
  written: number;
  /** The metadata of the last call that got a message; undefined when none did. */
  metadata?: LogMetadata;
  /**
   * The action's last reported state, on a followed download only. After a
   * followed download completed it is finished, unless the request's limit
   * was reached first.
   */
  action?: ActionState;
  /** How many DownloadTaskLog calls were made: 1 plus the reconnects. */
  calls: number;
}

/** A reconnect about to happen, for {@link RetryOptions.onReconnect}. */
export interface Reconnect {
  /** How the last call ended. */
  error: BuildLogError;
  /** The log offset the next call asks for. */
  offset: number;
  /** The pause before the next call, in ms. */
  delayMs: number;
  /**
   * The calls in a row that ended without progress, the last one included;
   * 0 when the last call made progress (delivered new bytes, or was ended
   * by the server as followed calls regularly are: then the pause is still
   * at least `minBackoffMs`).
   */
  failures: number;
}

/** How a download reconnects; the client's options give the defaults. */
export interface RetryOptions {
  /**
   * How many calls in a row may end without progress before the download
   * gives up with the last one's error; default 10. 0 turns reconnecting
   * off: the first call's ending is the download's.
   */
  maxRetries?: number;
  /**
   * The pause before the first reconnect after a failed call, in ms; each
   * further failure in a row doubles it, up to `maxBackoffMs`. Pauses are
   * jittered by up to half, and are at least the error's RetryInfo delay.
   * A reconnect after the server ended a followed call (FOLLOW_TIME_LIMIT,
   * FOLLOW_INTERRUPTED) pauses `minBackoffMs`. Defaults 100 and 5000.
   */
  minBackoffMs?: number;
  /** See `minBackoffMs`. */
  maxBackoffMs?: number;
  /** Called before each reconnect, such as to tell a user. */
  onReconnect?: (r: Reconnect) => void;
}

/** Options of one download. */
export interface DownloadOptions extends RetryOptions {
  /** Aborts the download: it then ends with a BuildLogError CANCELED (DEADLINE_EXCEEDED for `AbortSignal.timeout`), reason CLIENT_ABORTED. */
  signal?: AbortSignal;
  /** Called with the metadata of each call's first message. */
  onMetadata?: (m: LogMetadata) => void;
  /**
   * Called with each new state of a followed download's action: the first
   * one reported, then each that differs from the one before.
   */
  onAction?: (a: ActionState) => void;
  /** Extra request metadata (headers) for every call of this download. */
  headers?: Record<string, string>;
  /** The token for this download, instead of the client's. */
  token?: string;
}

/** Options of {@link createBuildLogClient}. */
export interface ClientOptions extends RetryOptions {
  /**
   * Where buildlogd's gRPC port is: "host:port" (plain-text HTTP/2), or a
   * URL, "http://host:port" or "https://host:port" (TLS; pass CAs and client
   * certificates in `nodeOptions`). Required unless `transport` is given.
   */
  address?: string;
  /** Same as `address`, in connect's terms; one of the two. */
  baseUrl?: string;
  /**
   * The caller's IAM token, sent in the metadata key `x-auth-token` of every
   * call. Without one, buildlogd answers UNAUTHENTICATED unless it holds
   * credentials of its own for authenticated (mTLS) callers.
   */
  token?: string;
  /** Options for Node's `http2.connect`, such as `ca`, `cert` and `key` for TLS. */
  nodeOptions?: http2.ClientSessionOptions | http2.SecureClientSessionOptions;
  /**
   * Send HTTP/2 PINGs every this many ms while calls are open, and drop a
   * connection that does not answer (connect-node's `pingIntervalMs`); off
   * by default.
   */
  pingIntervalMs?: number;
  /**
   * The HTTP/2 receive window of each call, in bytes: how much the server
   * may send ahead of what the caller read; default 4 MiB (Node's own is
   * 64 KiB, which halves the throughput of a local download). Memory held
   * per call is bounded by it.
   */
  streamWindowBytes?: number;
  /** The HTTP/2 receive window of the connection, shared by its calls; default 16 MiB. */
  connectionWindowBytes?: number;
  /**
   * A connect `Transport` to use instead of the client's own gRPC transport
   * (such as one with interceptors); `address`, `nodeOptions` and
   * `pingIntervalMs` are then ignored, and {@link BuildLogClient.close}
   * leaves it alone.
   */
  transport?: Transport;
}

import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RequestInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import type { DownloadResult } from "./types.js";

/** The google.rpc.ErrorInfo domain of every error buildlogd returns. */
export const ERROR_DOMAIN = "buildlog";

/**
 * ErrorInfo metadata keys buildlogd sets (Go: the `Metadata*` constants of
 * package `api`).
 */
export const MetadataKey = {
  /** The upstream's HTTP status, such as "404". */
  HTTP_STATUS: "httpStatus",
  /** The upstream's error_code, such as "CB.00060200". */
  UPSTREAM_ERROR_CODE: "upstreamErrorCode",
  /** The upstream's request id, for support requests to Huawei Cloud. */
  REQUEST_ID: "requestId",
  /** After a failure, the log offset to request the rest from. */
  RESUME_OFFSET: "resumeOffset",
  /** The log's size in bytes, on OUT_OF_RANGE. */
  LOG_SIZE: "logSize",
} as const;

/**
 * ErrorInfo reasons (Go: the `Reason*` constants of package `api`), plus the
 * client's own, which start with `CLIENT_`. Only the ones a caller is most
 * likely to branch on are listed; {@link BuildLogError.reason} may hold any
 * other reason buildlogd sends (see the README's "Error mapping").
 */
export const Reason = {
  INVALID_REQUEST: "INVALID_REQUEST",
  MISSING_TOKEN: "MISSING_TOKEN",
  INVALID_TOKEN: "INVALID_TOKEN",
  OFFSET_OUT_OF_RANGE: "OFFSET_OUT_OF_RANGE",
  OVERLOADED: "OVERLOADED",
  CALLER_IDLE: "CALLER_IDLE",
  CONNECTION_CLOSING: "CONNECTION_CLOSING",
  LOG_CHANGED: "LOG_CHANGED",
  FOLLOW_TIME_LIMIT: "FOLLOW_TIME_LIMIT",
  FOLLOW_INTERRUPTED: "FOLLOW_INTERRUPTED",
  UPSTREAM_UNAUTHENTICATED: "UPSTREAM_UNAUTHENTICATED",
  UPSTREAM_PERMISSION_DENIED: "UPSTREAM_PERMISSION_DENIED",
  UPSTREAM_NOT_FOUND: "UPSTREAM_NOT_FOUND",
  UPSTREAM_THROTTLED: "UPSTREAM_THROTTLED",
  UPSTREAM_UNAVAILABLE: "UPSTREAM_UNAVAILABLE",
  UPSTREAM_UNREACHABLE: "UPSTREAM_UNREACHABLE",
  UPSTREAM_INTERRUPTED: "UPSTREAM_INTERRUPTED",
  /**
   * The client's own: the server broke the download contract (an offset
   * that is not the next one, data past the range, a resumeOffset past the
   * bytes received, an OK ending before the range or the followed action was
   * complete). Code DATA_LOSS; never retried.
   */
  CLIENT_PROTOCOL_ERROR: "CLIENT_PROTOCOL_ERROR",
  /** The client's own: the caller's AbortSignal ended the download. Code CANCELED. */
  CLIENT_ABORTED: "CLIENT_ABORTED",
  /**
   * The client's own: the download was closed ({@link LogDownload.close},
   * or breaking out of its loop) or its client was
   * ({@link BuildLogClient.close}). Code CANCELED; never retried.
   */
  CLIENT_CLOSED: "CLIENT_CLOSED",
  /** The client's own: the stream given to `writeTo` failed. Code UNKNOWN. */
  CLIENT_WRITE_FAILED: "CLIENT_WRITE_FAILED",
  /**
   * The client's own: the connection broke (reset, refused, closed) without
   * a gRPC status, which gRPC clients report as UNAVAILABLE. Retryable.
   */
  CLIENT_CONNECTION_FAILED: "CLIENT_CONNECTION_FAILED",
} as const;

const codeNames: Record<number, string> = {
  0: "OK",
  [Code.Canceled]: "CANCELED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** One problem of an invalid request (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  /** The request field, such as "record_id". */
  field: string;
  /** What is wrong with it. */
  description: string;
}

/** The fields of a {@link BuildLogError}, for its constructor. */
export interface BuildLogErrorInit {
  code: Code;
  message: string;
  reason?: string;
  domain?: string;
  metadata?: Record<string, string>;
  retryDelayMs?: number;
  violations?: FieldViolation[];
  cause?: unknown;
}

/**
 * The one error type of this library: every download that does not deliver
 * its whole range ends with a BuildLogError, never with a short log.
 *
 * Errors from buildlogd carry the gRPC status code and message and the
 * google.rpc.ErrorInfo the server attached (`reason`, `domain` "buildlog",
 * `metadata` such as `resumeOffset`, `httpStatus`, `upstreamErrorCode`,
 * `requestId`), plus RetryInfo and BadRequest when sent. Errors the client
 * finds itself have a `CLIENT_` reason (see {@link Reason}).
 *
 * @example
 * ```ts
 * try { await log.writeTo(process.stdout); }
 * catch (e) {
 *   if (e instanceof BuildLogError && e.code === Code.NotFound) { ... }
 *   console.error(e.message); // "NOT_FOUND (UPSTREAM_NOT_FOUND): The build record ..."
 * }
 * ```
 */
export class BuildLogError extends Error {
  /** The gRPC status code (the numbers of `Code` from `@connectrpc/connect`, which are gRPC's). */
  readonly code: Code;
  /** The code's gRPC name, such as "UNAUTHENTICATED". */
  readonly codeName: string;
  /** The status message as the server sent it (for people; never holds a secret). */
  readonly rawMessage: string;
  /** The ErrorInfo reason, such as "INVALID_TOKEN"; "" when there was none. */
  readonly reason: string;
  /** The ErrorInfo domain: "buildlog" for the server's errors, "" otherwise. */
  readonly domain: string;
  /** The ErrorInfo metadata (see {@link MetadataKey}); empty when none. */
  readonly metadata: Readonly<Record<string, string>>;
  /** How long to wait before trying again (RetryInfo), in ms; 0 when not said. */
  readonly retryDelayMs: number;
  /** Every problem of an invalid request (BadRequest); empty otherwise. */
  readonly violations: readonly FieldViolation[];
  /**
   * How far the download got when it ended with this error: the bytes
   * delivered are the log from the request's offset to offset + written.
   * Set by downloads; undefined on an error made elsewhere.
   */
  result?: DownloadResult;

  constructor(init: BuildLogErrorInit) {
    const codeName = codeNames[init.code] ?? `CODE_${init.code}`;
    const reason = init.reason ?? "";
    super(`${codeName}${reason ? ` (${reason})` : ""}: ${init.message}`, { cause: init.cause });
    this.name = "BuildLogError";
    this.code = init.code;
    this.codeName = codeName;
    this.rawMessage = init.message;
    this.reason = reason;
    this.domain = init.domain ?? "";
    this.metadata = Object.freeze({ ...(init.metadata ?? {}) });
    this.retryDelayMs = init.retryDelayMs ?? 0;
    this.violations = Object.freeze([...(init.violations ?? [])]);
  }

  /** The ErrorInfo metadata "requestId" (the upstream's), or "". */
  get requestId(): string {
    return this.metadata[MetadataKey.REQUEST_ID] ?? "";
  }

  /**
   * The ErrorInfo metadata "resumeOffset" as a number: after a failure
   * mid-stream, the offset to request next. undefined when not sent.
   */
  get resumeOffset(): number | undefined {
    const s = this.metadata[MetadataKey.RESUME_OFFSET];
    if (s === undefined || !/^\d+$/.test(s)) return undefined;
    return Number(s);
  }

  /**
   * Whether a download that ended with this error may go on with another
   * call, as the Go client's `Retryable` says: UNAVAILABLE (the server or
   * its upstream unreachable or interrupted, a server shutting down or
   * restarting, a connection closing), DEADLINE_EXCEEDED for the server's
   * follow time limit (FOLLOW_TIME_LIMIT), and RESOURCE_EXHAUSTED with a
   * retry delay. Others, such as UNAUTHENTICATED, NOT_FOUND, OUT_OF_RANGE or
   * ABORTED (LOG_CHANGED: download again from the start), are final, and so
   * are the caller's abort, a close and the client's own protocol errors.
   */
  get retryable(): boolean {
    switch (this.code) {
      case Code.Unavailable:
        return true;
      case Code.DeadlineExceeded:
        return this.reason === Reason.FOLLOW_TIME_LIMIT;
      case Code.ResourceExhausted:
        return this.retryDelayMs > 0;
      default:
        return false;
    }
  }

  /**
   * Returns err as a BuildLogError: itself, or one read from a ConnectError
   * (its code, message and google.rpc details), or an UNKNOWN one wrapping
   * anything else.
   */
  static from(err: unknown): BuildLogError {
    if (err instanceof BuildLogError) return err;
    if (err instanceof ConnectError) return fromConnectError(err, false);
    return new BuildLogError({
      code: Code.Unknown,
      message: err instanceof Error ? err.message : String(err),
      cause: err,
    });
  }
}

// Node error codes of a connection that broke under a call. connect-node
// reports some of them as ABORTED or INTERNAL, where gRPC's own clients
// (and the Go client this library mirrors) see UNAVAILABLE.
const connectionErrorCodes = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ERR_STREAM_PREMATURE_CLOSE",
  "ERR_HTTP2_STREAM_ERROR",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_ERROR",
]);

function nodeErrorCodes(err: unknown): string[] {
  const codes: string[] = [];
  const seen = new Set<unknown>();
  while (err instanceof Error && !seen.has(err)) {
    seen.add(err);
    const c = (err as { code?: unknown }).code;
    if (typeof c === "string") codes.push(c);
    err = (err as { cause?: unknown }).cause;
  }
  return codes;
}

/**
 * Reads a call's error. `callerCancelled` says whether the caller cancelled
 * the call: when it did not, a CANCELED without ErrorInfo is the HTTP/2
 * stream being closed under the call, as Node does to the streams of a
 * connection that went away (a server killed), which gRPC's own clients
 * report as UNAVAILABLE.
 *
 * @internal
 */
export function fromCallError(err: unknown, callerCancelled: boolean): BuildLogError {
  if (err instanceof ConnectError) return fromConnectError(err, callerCancelled);
  return BuildLogError.from(err);
}

function fromConnectError(err: ConnectError, callerCancelled: boolean): BuildLogError {
  const [info] = err.findDetails(ErrorInfoSchema);
  const [retry] = err.findDetails(RetryInfoSchema);
  const [bad] = err.findDetails(BadRequestSchema);
  const [reqInfo] = err.findDetails(RequestInfoSchema);
  let retryDelayMs = 0;
  if (retry?.retryDelay) {
    retryDelayMs = Number(retry.retryDelay.seconds) * 1000 + Math.ceil(retry.retryDelay.nanos / 1e6);
  }
  const metadata: Record<string, string> = { ...(info?.metadata ?? {}) };
  if (reqInfo?.requestId && metadata[MetadataKey.REQUEST_ID] === undefined) {
    metadata[MetadataKey.REQUEST_ID] = reqInfo.requestId;
  }
  let code = err.code;
  let reason = info?.reason ?? "";
  // A broken connection without any gRPC status from the server.
  if (!info && code === Code.Canceled && !callerCancelled) {
    code = Code.Unavailable;
    reason = Reason.CLIENT_CONNECTION_FAILED;
  } else if (!info && code !== Code.Canceled && nodeErrorCodes(err).some((c) => connectionErrorCodes.has(c))) {
    code = Code.Unavailable;
    reason = Reason.CLIENT_CONNECTION_FAILED;
  }
  return new BuildLogError({
    code,
    message: err.rawMessage,
    reason,
    domain: info?.domain ?? "",
    metadata,
    retryDelayMs,
    violations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
    cause: err,
  });
}

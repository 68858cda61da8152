/**
 * TypeScript client of buildlog's gRPC API (`buildlog.v1.BuildLogService`):
 * {@link createBuildLogClient} makes a client whose `download` and `follow`
 * deliver a build action's log as an async iterable of byte chunks, resumed
 * across the server's retryable endings and checked (contiguous offsets,
 * the whole range), or end with one error type, {@link BuildLogError}.
 *
 * The generated message and service descriptors (protoc-gen-es v2) are
 * exported too, for callers that use `@connectrpc/connect` directly.
 *
 * @packageDocumentation
 */
export {
  createBuildLogClient,
  logKey,
  TOKEN_METADATA_KEY,
  LOG_KEY_METADATA_KEY,
  DEFAULT_MAX_RETRIES,
  DEFAULT_MIN_BACKOFF_MS,
  DEFAULT_MAX_BACKOFF_MS,
  DEFAULT_STREAM_WINDOW_BYTES,
  DEFAULT_CONNECTION_WINDOW_BYTES,
  type BuildLogClient,
  type LogDownload,
} from "./client.js";
export { BuildLogError, Reason, MetadataKey, ERROR_DOMAIN, type FieldViolation, type BuildLogErrorInit } from "./errors.js";
export type {
  ActionState,
  ClientOptions,
  DownloadOptions,
  DownloadRequest,
  DownloadResult,
  LogMetadata,
  Reconnect,
  RetryOptions,
} from "./types.js";
export { Code } from "@connectrpc/connect";
export * as pb from "./gen/buildlog/v1/buildlog_pb.js";
export { LogLevel, BuildLogService } from "./gen/buildlog/v1/buildlog_pb.js";

/** Kakeya's TypeScript SDK: sessions of raw token ids on a Kakeya runtime, over gRPC. */

export { Client, DEFAULT_ADDRESS, DEFAULT_TIMEOUT_MS, DEFAULT_TOKENS_PER_MESSAGE } from "./client.js";
export type { ClientOptions, SessionOptions } from "./client.js";
export {
  ClientClosedError, DeadlineExceededError, ERROR_OF_STATUS, errorFromStatus, FailedPreconditionError, InternalError,
  InvalidArgumentError, KakeyaError, ResourceExhaustedError, RuntimeUnavailableError, SessionClosedError,
  SessionNotFoundError, UnauthenticatedError,
} from "./errors.js";
export { Session } from "./session.js";
export type { GenerateOptions } from "./session.js";
export { GenerationStream } from "./stream.js";
export { StopReason } from "./types.js";
export type { PlainReply, RuntimeInfo, SessionInfo, SessionSummary } from "./types.js";
export { status as Status } from "@grpc/grpc-js";

/**
 * The SDK's errors, mirroring the runtime's status codes in one table.
 *
 * Every failure a call reports is a `KakeyaError`; gRPC's own error objects never reach callers.
 * The class names are those of the Python SDK (sdk/errors.py).
 */

import { status as Status } from "@grpc/grpc-js";

/** Base of every SDK error. `code` is the gRPC status, or undefined when raised locally without an RPC. */
export class KakeyaError extends Error {
  readonly code: Status | undefined;

  constructor(message: string, code?: Status) {
    super(message);
    this.name = new.target.name;
    this.code = code ?? (new.target as { readonly defaultCode?: Status }).defaultCode;
  }
}

/** Unknown, closed or evicted session id (or another API key's). */
export class SessionNotFoundError extends KakeyaError {
  static readonly defaultCode = Status.NOT_FOUND;
}

/** The request was malformed or out of range; the session's history is unchanged. */
export class InvalidArgumentError extends KakeyaError {
  static readonly defaultCode = Status.INVALID_ARGUMENT;
}

/** The session's state does not allow the request (e.g. Generate on an empty history). */
export class FailedPreconditionError extends KakeyaError {
  static readonly defaultCode = Status.FAILED_PRECONDITION;
}

/** Sessions or KV memory are full and nothing idle could be evicted. */
export class ResourceExhaustedError extends KakeyaError {
  static readonly defaultCode = Status.RESOURCE_EXHAUSTED;
}

/** Missing or wrong API key. */
export class UnauthenticatedError extends KakeyaError {
  static readonly defaultCode = Status.UNAUTHENTICATED;
}

/** The runtime is unreachable, still loading its model, or shutting down; retrying may succeed. */
export class RuntimeUnavailableError extends KakeyaError {
  static readonly defaultCode = Status.UNAVAILABLE;
}

/** The call did not finish within its deadline. */
export class DeadlineExceededError extends KakeyaError {
  static readonly defaultCode = Status.DEADLINE_EXCEEDED;
}

/** The runtime failed unexpectedly, or answered with a status the SDK does not know. */
export class InternalError extends KakeyaError {
  static readonly defaultCode = Status.INTERNAL;
}

/** The session was closed through this object; raised locally, no RPC is made. */
export class SessionClosedError extends KakeyaError {}

/** The client was closed; raised locally, no RPC is made. */
export class ClientClosedError extends KakeyaError {}

type ErrorClass = new (message: string, code?: Status) => KakeyaError;

/** The one table from status code to error class; codes not listed become InternalError. */
export const ERROR_OF_STATUS: ReadonlyMap<Status, ErrorClass> = new Map<Status, ErrorClass>([
  [Status.NOT_FOUND, SessionNotFoundError],
  [Status.INVALID_ARGUMENT, InvalidArgumentError],
  [Status.FAILED_PRECONDITION, FailedPreconditionError],
  [Status.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [Status.UNAUTHENTICATED, UnauthenticatedError],
  [Status.UNAVAILABLE, RuntimeUnavailableError],
  [Status.DEADLINE_EXCEEDED, DeadlineExceededError],
  [Status.INTERNAL, InternalError],
]);

/** The SDK error for a failed call, keeping the server's message and the actual status code. */
export function errorFromStatus(code: Status, details: string | undefined): KakeyaError {
  const ErrorOfCode = ERROR_OF_STATUS.get(code) ?? InternalError;
  return new ErrorOfCode(details || Status[code] || `status ${code}`, code);
}

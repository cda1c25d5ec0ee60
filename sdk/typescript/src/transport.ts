/**
 * The connection under a Client: one gRPC channel, the call metadata, deadlines and error translation.
 *
 * Sessions and streams make every call through here, so the API key, the default deadline and the
 * mapping of gRPC failures to SDK errors are applied in exactly one place.
 */

import { readFileSync } from "node:fs";

import { credentials, Metadata, status as Status } from "@grpc/grpc-js";
import type { CallOptions, ChannelCredentials, ClientReadableStream, ServiceError } from "@grpc/grpc-js";

import { ClientClosedError, errorFromStatus, InvalidArgumentError } from "./errors.js";
import type { KakeyaError } from "./errors.js";
import { RuntimeServiceClient } from "./gen/kakeya/v1/runtime.js";
import type * as pb from "./gen/kakeya/v1/runtime.js";

/** The runtime accepts messages up to this size; a long append must not hit gRPC's 4 MiB default first. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
export const MAX_UINT32 = 2 ** 32 - 1;

/** Request and reply types of each unary method of the generated client. */
interface UnaryMethods {
  createSession: [pb.CreateSessionRequest, pb.CreateSessionResponse];
  appendTokens: [pb.AppendTokensRequest, pb.AppendTokensResponse];
  closeSession: [pb.CloseSessionRequest, pb.CloseSessionResponse];
  getSessionInfo: [pb.GetSessionInfoRequest, pb.GetSessionInfoResponse];
  getRuntimeInfo: [pb.GetRuntimeInfoRequest, pb.GetRuntimeInfoResponse];
  listSessions: [pb.ListSessionsRequest, pb.ListSessionsResponse];
  forkSession: [pb.ForkSessionRequest, pb.ForkSessionResponse];
}
type UnaryFunction<Request, Reply> = (request: Request, metadata: Metadata, options: Partial<CallOptions>,
  callback: (error: ServiceError | null, reply: Reply) => void) => { cancel(): void };

export interface TransportOptions {
  apiKey?: string | undefined;
  timeoutMs: number | null;
  tls: boolean;
  rootCertificates?: Uint8Array | string | undefined;
  maxTokensPerMessage: number;
}

export class Transport {
  readonly address: string;
  readonly timeoutMs: number | null;
  readonly maxTokensPerMessage: number;
  private readonly credentials: ChannelCredentials;
  private readonly apiKey: string | undefined;
  private stub: RuntimeServiceClient | undefined;
  // Calls in flight, cancelled when the client closes.
  private readonly calls = new Set<{ cancel(): void }>();
  private closed = false;

  constructor(address: string, options: TransportOptions) {
    if (options.timeoutMs !== null && !(options.timeoutMs > 0)) {
      throw new RangeError(`timeoutMs must be > 0 or null, got ${options.timeoutMs}`);
    }
    checkCount("maxTokensPerMessage", options.maxTokensPerMessage, MAX_UINT32);
    this.address = address;
    this.timeoutMs = options.timeoutMs;
    this.maxTokensPerMessage = options.maxTokensPerMessage;
    this.apiKey = options.apiKey || undefined;
    const roots = typeof options.rootCertificates === "string"
      ? readFileSync(options.rootCertificates) : options.rootCertificates;
    // TLS when asked for, or implied by a trust root; without roots the system's verify the server.
    this.credentials = options.tls || roots !== undefined
      ? credentials.createSsl(roots === undefined ? null : Buffer.from(roots)) : credentials.createInsecure();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Calls one unary RPC under the default deadline; failures come back as KakeyaError. */
  unary<M extends keyof UnaryMethods>(method: M, request: UnaryMethods[M][0]): Promise<UnaryMethods[M][1]> {
    const stub = this.readyStub();
    const rpc = stub[method] as unknown as UnaryFunction<UnaryMethods[M][0], UnaryMethods[M][1]>;
    const options = this.timeoutMs === null ? {} : { deadline: Date.now() + this.timeoutMs };
    return new Promise((resolve, reject) => {
      const call = rpc.call(stub, request, this.metadata(), options, (error, reply) => {
        this.calls.delete(call);
        if (error) {
          reject(this.errorOf(error));
        } else {
          resolve(reply);
        }
      });
      this.calls.add(call);
    });
  }

  /** Starts a Generate stream. No default deadline: a long generation is not a fault. */
  generate(request: pb.GenerateRequest, timeoutMs: number | undefined): ClientReadableStream<pb.GenerateResponse> {
    const call = this.readyStub().generate(request, this.metadata(),
      timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs });
    this.calls.add(call);
    call.on("status", () => this.calls.delete(call));
    return call;
  }

  /** The SDK error for a failed call; a call cancelled by closing the client says so. */
  errorOf(error: ServiceError): KakeyaError {
    if (this.closed && error.code === Status.CANCELLED) {
      return new ClientClosedError("the client was closed during the call");
    }
    return errorFromStatus(error.code, error.details);
  }

  /** Closes the channel; calls in flight are cancelled. Closing twice is harmless. */
  close(): void {
    this.closed = true;
    for (const call of [...this.calls]) {
      cancelCall(call);
    }
    this.calls.clear();
    const stub = this.stub;
    this.stub = undefined;
    stub?.close();
  }

  private readyStub(): RuntimeServiceClient {
    if (this.closed) {
      throw new ClientClosedError("the client is closed");
    }
    // Created on first use, so a Client that is never used opens no connection.
    this.stub ??= new RuntimeServiceClient(this.address, this.credentials, {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    });
    return this.stub;
  }

  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.apiKey !== undefined) {
      metadata.set("authorization", `Bearer ${this.apiKey}`);
    }
    return metadata;
  }
}

/**
 * Cancels a call, so that the runtime stops its work. @grpc/grpc-js (1.14) opens a call's HTTP/2
 * stream a few microtasks after the call is made, and a cancel that lands in between ends the call
 * here but not there: the request still goes out, and a Generate would run to max_tokens. By the
 * next turn of the event loop the stream exists, and cancelling again resets it.
 */
export function cancelCall(call: { cancel(): void }): void {
  call.cancel();
  setImmediate(() => call.cancel());
}

/** Token ids as a uint32 array; anything else fails here, before any RPC, as InvalidArgumentError. */
export function tokenIdList(tokenIds: Iterable<number>, what = "token id"): number[] {
  const ids = [...tokenIds];
  for (const id of ids) {
    checkUint(what, id, MAX_UINT32);
  }
  return ids;
}

export function checkUint(name: string, value: unknown, most: number): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > most) {
    throw new InvalidArgumentError(`${name} must be an integer from 0 to ${most}, got ${String(value)}`);
  }
}

/** A count option (tokens a message): a misuse of the API, so a RangeError rather than a call's error. */
export function checkCount(name: string, value: unknown, most: number): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > most) {
    throw new RangeError(`${name} must be an integer from 1 to ${most}, got ${String(value)}`);
  }
}

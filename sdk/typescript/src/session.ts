/**
 * A handle on one server-side session: append token ids, generate, inspect, close.
 *
 * The session itself lives in the runtime and outlives this object and its connection; closing
 * is what frees its KV memory.
 */

import { InvalidArgumentError, KakeyaError, SessionClosedError } from "./errors.js";
import {
  AppendTokensRequest, CloseSessionRequest, ForkSessionRequest, GenerateRequest, GetSessionInfoRequest,
} from "./gen/kakeya/v1/runtime.js";
import { GenerationStream } from "./stream.js";
import { checkCount, checkUint, MAX_UINT32, tokenIdList } from "./transport.js";
import type { Transport } from "./transport.js";
import { sessionInfoOfReply } from "./types.js";
import type { SessionInfo } from "./types.js";

const MAX_UINT64 = 2n ** 64n - 1n;

export interface GenerateOptions {
  /** Unset or 0: greedy. */
  temperature?: number | undefined;
  topP?: number | undefined;
  topK?: number | undefined;
  /** Makes sampling reproducible; any uint64 (a bigint above 2^53). */
  seed?: number | bigint | undefined;
  /** Tokens sampled while this reader was behind may come up to this many a message (default: the client's). */
  maxTokensPerMessage?: number | undefined;
  /**
   * K > 1 lets the runtime hold tokens after the first until K are ready (or the generation
   * ends): fewer messages, each up to K - 1 decode steps later. At most maxTokensPerMessage.
   */
  minTokensPerMessage?: number | undefined;
  /** Aborting it cancels the generation; the reader gets the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Bounds the whole call (DeadlineExceededError); none by default. */
  timeoutMs?: number | undefined;
}

export class Session {
  readonly sessionId: string;
  readonly #transport: Transport;
  #finalLength: number | undefined;
  #closing: Promise<number> | undefined;

  constructor(transport: Transport, sessionId: string) {
    this.#transport = transport;
    this.sessionId = sessionId;
  }

  /** True once close() succeeded through this object (the runtime may also drop a session). */
  get isClosed(): boolean {
    return this.#finalLength !== undefined;
  }

  /** Appends raw token ids and returns the history length. An empty append is a no-op. */
  async append(tokenIds: Iterable<number>): Promise<number> {
    this.#checkOpen();
    const request = AppendTokensRequest.create({ sessionId: this.sessionId, tokenIds: tokenIdList(tokenIds) });
    return Number((await this.#transport.unary("appendTokens", request)).historyLength);
  }

  /**
   * Starts a generation from the history; its tokens join the history as they are sampled.
   * Greedy unless temperature > 0; with a seed, sampling is reproducible. Errors the runtime finds
   * in the request surface when the stream is read.
   */
  generate(maxTokens: number, options: GenerateOptions = {}): GenerationStream {
    this.#checkOpen();
    checkUint("maxTokens", maxTokens, MAX_UINT32);
    const maxPerMessage = options.maxTokensPerMessage ?? this.#transport.maxTokensPerMessage;
    checkCount("maxTokensPerMessage", maxPerMessage, MAX_UINT32);
    const minPerMessage = options.minTokensPerMessage ?? 1;
    checkCount("minTokensPerMessage", minPerMessage, maxPerMessage);
    if (options.topK !== undefined) {
      checkUint("topK", options.topK, MAX_UINT32);
    }
    const request = GenerateRequest.create({
      sessionId: this.sessionId,
      maxTokens,
      maxTokensPerMessage: maxPerMessage,
      minTokensPerMessage: minPerMessage,
      // Unset fields mean the runtime's defaults, so undefined is never sent as 0.
      temperature: options.temperature,
      topP: options.topP,
      topK: options.topK,
      seed: seedOf(options.seed),
    });
    return new GenerationStream(this.#transport, request, { signal: options.signal, timeoutMs: options.timeoutMs });
  }

  /**
   * A new session with this one's history and a copy of its KV, ready to append and generate at
   * once; the two then go their own ways. Waits for this session's queued work first. The fork is
   * a session of its own: close it too. Its label is this one's unless `label` is given.
   */
  async fork(options: { label?: string | undefined } = {}): Promise<Session> {
    this.#checkOpen();
    const request = ForkSessionRequest.create({ sessionId: this.sessionId, clientLabel: options.label });
    const reply = await this.#transport.unary("forkSession", request);
    return new Session(this.#transport, reply.sessionId);
  }

  async info(): Promise<SessionInfo> {
    this.#checkOpen();
    return sessionInfoOfReply(await this.#transport.unary("getSessionInfo",
      GetSessionInfoRequest.create({ sessionId: this.sessionId })));
  }

  /** Closes the session and returns its final history length; a second close makes no RPC. */
  close(): Promise<number> {
    this.#closing ??= this.#closeCall().then(
      (reply) => {
        this.#finalLength = Number(reply.finalHistoryLength);
        return this.#finalLength;
      },
      (error: unknown) => {
        this.#closing = undefined; // a failed close may be retried
        throw error;
      },
    );
    return this.#closing;
  }

  async #closeCall(): Promise<{ finalHistoryLength: bigint }> {
    return this.#transport.unary("closeSession", CloseSessionRequest.create({ sessionId: this.sessionId }));
  }

  #checkOpen(): void {
    if (this.#finalLength !== undefined) {
      throw new SessionClosedError(`session ${this.sessionId} was closed`);
    }
  }
}

/** Closes a session when a block leaves; an error from the block wins over one from the close. */
export async function closeAfter(session: Session, failed: boolean): Promise<void> {
  if (!failed) {
    await session.close();
    return;
  }
  try {
    await session.close();
  } catch (error) {
    if (!(error instanceof KakeyaError)) {
      throw error;
    }
  }
}

function seedOf(seed: number | bigint | undefined): bigint | undefined {
  if (seed === undefined) {
    return undefined;
  }
  if (typeof seed === "number") {
    checkUint("seed", seed, Number.MAX_SAFE_INTEGER);
    return BigInt(seed);
  }
  if (typeof seed !== "bigint" || seed < 0n || seed > MAX_UINT64) {
    throw new InvalidArgumentError(`seed must be an integer from 0 to ${MAX_UINT64}, got ${String(seed)}`);
  }
  return seed;
}

/**
 * One generation: an async iterable of token ids, then the runtime's summary of the call.
 *
 * Leaving `for await` early (break, return or throw), aborting the AbortSignal passed to
 * `generate` and `cancel()` all cancel the RPC, which makes the runtime stop the generation within
 * one scheduler step. Tokens it already sampled stay in the session's history.
 */

import type { ClientReadableStream, ServiceError } from "@grpc/grpc-js";

import { InternalError } from "./errors.js";
import type { GenerateDone, GenerateRequest, GenerateResponse } from "./gen/kakeya/v1/runtime.js";
import { cancelCall } from "./transport.js";
import type { Transport } from "./transport.js";
import { StopReason, stopReasonOfWire } from "./types.js";

export interface StreamOptions {
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
}

/**
 * Token ids as they are sampled; `stopReason`, the counts and the timings are set once it ends.
 *
 * The RPC starts when the stream is created, so the generation keeps its place in the session's
 * order even before it is read. A stream can be read once. Replies are queued as they arrive (a
 * generation holds at most max_tokens ids), so a slow reader never stalls the runtime.
 */
export class GenerationStream implements AsyncIterable<number> {
  stopReason: StopReason | undefined = undefined;
  generatedTokenCount = 0;
  prefillTokenCount = 0;
  prefillDurationSeconds = 0;
  totalDurationSeconds = 0;
  /** Tokens that left the attention window (bounded mode) since the previous report. */
  droppedTokenCount = 0;
  /** Speculative decoding: draft tokens the runtime verified for this call, and those accepted. */
  draftTokenCount = 0;
  acceptedDraftTokenCount = 0;

  readonly #call: ClientReadableStream<GenerateResponse> | undefined;
  readonly #replies: GenerateResponse[] = [];
  #replyIndex = 0;
  #pending: number[] = []; // the rest of a `tokens` message
  #ended = false; // the server's last reply has arrived
  #failure: Error | undefined; // raised by the next read
  #finished = false; // no more reads: ended and read, failed, or cancelled
  #isRead = false;
  #wake: (() => void) | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => this.#abort();

  constructor(transport: Transport, request: GenerateRequest, options: StreamOptions = {}) {
    this.#signal = options.signal;
    if (this.#signal?.aborted) {
      // Aborted before it started: no call is made, and the first read reports the abort.
      this.#finish(StopReason.CANCELLED);
      this.#failure = abortReason(this.#signal);
      return;
    }
    const call = transport.generate(request, options.timeoutMs);
    this.#call = call;
    call.on("data", (reply: GenerateResponse) => {
      this.#replies.push(reply);
      this.#notify();
    });
    call.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    call.on("error", (error: ServiceError) => {
      if (!this.#finished) {
        this.#failure = transport.errorOf(error);
      }
      this.#ended = true;
      this.#notify();
    });
    this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  get isDone(): boolean {
    return this.#finished;
  }

  /** Stops the generation on the runtime; reading then ends. Tokens already sampled stay in the history. */
  cancel(): void {
    if (this.#finished) {
      return;
    }
    this.#finish(StopReason.CANCELLED);
    if (this.#call !== undefined) {
      cancelCall(this.#call);
    }
    this.#notify();
  }

  /** Reads the whole stream and returns its token ids. */
  async collect(): Promise<number[]> {
    const tokens: number[] = [];
    for await (const token of this) {
      tokens.push(token);
    }
    return tokens;
  }

  [Symbol.asyncIterator](): AsyncIterator<number> {
    if (this.#isRead) {
      throw new Error("a generation stream can be read only once");
    }
    this.#isRead = true;
    return {
      next: () => this.#next(),
      // What `for await` calls when it is left early: the RPC is cancelled at once.
      return: async () => {
        this.cancel();
        return { done: true, value: undefined };
      },
    };
  }

  async #next(): Promise<IteratorResult<number>> {
    for (;;) {
      const failure = this.#failure;
      if (failure !== undefined) {
        this.#failure = undefined;
        this.#finish(undefined);
        throw failure;
      }
      if (this.#finished) {
        return { done: true, value: undefined };
      }
      const token = this.#pending.shift();
      if (token !== undefined) {
        return { done: false, value: token };
      }
      if (this.#replyIndex < this.#replies.length) {
        const reply = this.#replies[this.#replyIndex]!;
        // Read replies are dropped in batches, so a long stream's queue costs no quadratic shifting.
        if (++this.#replyIndex >= 256) {
          this.#replies.splice(0, this.#replyIndex);
          this.#replyIndex = 0;
        }
        const value = this.#apply(reply);
        if (value !== undefined) {
          return { done: false, value };
        }
        continue;
      }
      if (this.#ended) {
        this.#finish(undefined);
        if (this.stopReason === undefined) {
          throw new InternalError("the generation stream ended without its final event");
        }
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  /** Applies one reply; returns the next token id, if the reply carried any. */
  #apply(reply: GenerateResponse): number | undefined {
    const payload = reply.payload;
    switch (payload?.$case) {
      case "tokenId":
        this.generatedTokenCount += 1;
        return payload.value;
      case "tokens":
        this.generatedTokenCount += payload.value.tokenIds.length;
        this.#pending.push(...payload.value.tokenIds);
        return this.#pending.shift();
      case "truncated":
        this.droppedTokenCount += Number(payload.value.droppedTokenCount);
        return undefined;
      case "done":
        this.#applyDone(payload.value);
        return undefined;
      default:
        return undefined; // a payload newer than this SDK
    }
  }

  #applyDone(done: GenerateDone): void {
    const stopReason = stopReasonOfWire(done.stopReason);
    if (stopReason === undefined) {
      this.cancel();
      this.#failure = new InternalError(`unknown stop reason ${done.stopReason}`);
      return;
    }
    this.stopReason = stopReason;
    this.generatedTokenCount = done.generatedTokenCount;
    this.prefillTokenCount = done.prefillTokenCount;
    this.prefillDurationSeconds = done.prefillDurationSeconds;
    this.totalDurationSeconds = done.totalDurationSeconds;
    this.draftTokenCount = done.draftTokenCount;
    this.acceptedDraftTokenCount = done.acceptedDraftTokenCount;
  }

  #abort(): void {
    if (this.#finished) {
      return;
    }
    this.cancel();
    // The reader waiting on this stream (or the next one) learns why, as fetch() does.
    this.#failure = abortReason(this.#signal!);
    this.#notify();
  }

  #finish(stopReason: StopReason | undefined): void {
    this.#finished = true;
    this.#pending = [];
    this.stopReason ??= stopReason;
    this.#signal?.removeEventListener("abort", this.#onAbort);
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) {
    return reason;
  }
  const error = new Error(reason === undefined ? "This operation was aborted" : String(reason));
  error.name = "AbortError";
  return error;
}

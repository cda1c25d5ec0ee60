/**
 * Plain values the SDK returns: why a generation stopped, and snapshots of a session, of the
 * caller's sessions and of the runtime.
 *
 * They are built from the wire messages here so that generated types never reach callers. The
 * snapshots copy every field of their reply (64-bit counts become numbers, lists become frozen
 * arrays); test/package.test.ts checks the interfaces below name exactly the reply's fields.
 */

import { GenerateDone_StopReason } from "./gen/kakeya/v1/runtime.js";
import type {
  GetRuntimeInfoResponse, GetSessionInfoResponse, SessionSummary as SessionSummaryReply,
} from "./gen/kakeya/v1/runtime.js";

/** Why a generation ended. `CANCELLED` is also set locally when the reader stopped before the end. */
export const StopReason = {
  MAX_TOKENS: "MAX_TOKENS",
  EOS: "EOS",
  CANCELLED: "CANCELLED",
  TRUNCATED: "TRUNCATED",
} as const;
export type StopReason = (typeof StopReason)[keyof typeof StopReason];

const STOP_REASON_OF_WIRE: ReadonlyMap<number, StopReason> = new Map<number, StopReason>([
  [GenerateDone_StopReason.STOP_REASON_MAX_TOKENS, StopReason.MAX_TOKENS],
  [GenerateDone_StopReason.STOP_REASON_EOS, StopReason.EOS],
  [GenerateDone_StopReason.STOP_REASON_CANCELLED, StopReason.CANCELLED],
  [GenerateDone_StopReason.STOP_REASON_TRUNCATED, StopReason.TRUNCATED],
]);

/** The stop reason of a wire value, or undefined for one this SDK does not know. */
export function stopReasonOfWire(value: number): StopReason | undefined {
  return STOP_REASON_OF_WIRE.get(value);
}

/** One session's state as the runtime saw it when answering (GetSessionInfoResponse). */
export interface SessionInfo {
  readonly historyLength: number;
  /** Bytes of KV memory held by the session (its reserved capacity). */
  readonly kvLiveBytes: number;
  readonly kvResidentTokens: number;
  /** Appended but not yet prefilled: prefill is lazy, the next generation does it. */
  readonly pendingTokens: number;
  readonly inv1Violations: number;
  readonly inv2Violations: number;
  readonly idleSeconds: number;
  readonly clientLabel: string;
  /** The ids that stop a generation: the model's own unless the session named others or none. */
  readonly eosTokenIds: readonly number[];
  /** Of kvLiveBytes, the bytes of the positions stored (kvResidentTokens). */
  readonly kvUsedBytes: number;
  /**
   * Of kvLiveBytes, the bytes held for positions not stored yet: room for the rest of a running
   * generation, or for the next one. kvLiveBytes = kvUsedBytes + kvReservedBytes.
   */
  readonly kvReservedBytes: number;
}

/** One of the caller's sessions, as listSessions reports it (SessionSummary). */
export interface SessionSummary {
  readonly sessionId: string;
  readonly clientLabel: string;
  /** As SessionInfo reports it, the tokens of a running generation included. */
  readonly historyLength: number;
  readonly kvLiveBytes: number;
  /** 0 while busy. */
  readonly idleSeconds: number;
  /** A generation or another request is running or queued on the session. */
  readonly busy: boolean;
}

/**
 * The loaded model, the device, the runtime's limits and its batching figures. Field names follow
 * GetRuntimeInfoResponse, except the invariant counters, which are named as in SessionInfo.
 */
export interface RuntimeInfo {
  readonly modelId: string;
  readonly vocabSize: number;
  readonly defaultEosTokenIds: readonly number[];
  readonly device: string;
  readonly dtype: string;
  readonly version: string;
  /** Longest history a session may hold in full-attention mode. */
  readonly maxContextTokens: number;
  readonly maxSessions: number;
  readonly kvBudgetBytes: number;
  readonly kvUsedBytes: number;
  readonly activeSessions: number;
  readonly maxAppendTokens: number;
  readonly maxGenerateTokens: number;
  /** Bounded mode; both 0 under full attention. */
  readonly sinkTokens: number;
  readonly windowTokens: number;
  readonly deterministic: boolean;
  readonly forwardCount: number;
  readonly maxSessionsPerForward: number;
  readonly meanSessionsPerForward: number;
  readonly kvBytesPerToken: number;
  readonly inv1Violations: number;
  readonly inv2Violations: number;
  /** Speculative decoding: "none", "ngram" or "draft", draft tokens per step, the draft model. */
  readonly speculativeMode: string;
  readonly numDraftTokens: number;
  readonly draftModelId: string;
  /** The model's architecture (its model_type), the forward in use ("cuda-decoder", "cpu-decoder" or
   * "generic"), how the layers attend, and what the weights are held as. */
  readonly architecture: string;
  readonly forwardPath: string;
  readonly attentionPath: string;
  readonly weightsHeldAs: string;
}

/** The invariant counters' names: shorter than the wire names, and those of the Python SDK. */
const NAME_OF_WIRE_NAME: Readonly<Record<string, string>> = {
  cacheInvariantInv1Violations: "inv1Violations",
  cacheInvariantInv2Violations: "inv2Violations",
};

type Renamed<K> = K extends "cacheInvariantInv1Violations" ? "inv1Violations"
  : K extends "cacheInvariantInv2Violations" ? "inv2Violations" : K;
type PlainValue<V> = V extends bigint ? number : V extends readonly (infer U)[] ? readonly U[] : V;

/** What `plainValues` makes of a reply type: the shape SessionInfo, SessionSummary and RuntimeInfo must have. */
export type PlainReply<T> = { readonly [K in keyof T as Renamed<K>]: PlainValue<T[K]> };

/** Every field of a reply, renamed, with 64-bit counts as numbers and lists as frozen arrays. */
export function plainValues<T extends object>(reply: T): PlainReply<T> {
  const values: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(reply)) {
    values[NAME_OF_WIRE_NAME[name] ?? name] = typeof value === "bigint" ? Number(value)
      : Array.isArray(value) ? Object.freeze([...value]) : value;
  }
  return Object.freeze(values) as PlainReply<T>;
}

export function sessionInfoOfReply(reply: GetSessionInfoResponse): SessionInfo {
  return plainValues(reply);
}

export function sessionSummaryOfReply(reply: SessionSummaryReply): SessionSummary {
  return plainValues(reply);
}

export function runtimeInfoOfReply(reply: GetRuntimeInfoResponse): RuntimeInfo {
  const values = plainValues(reply);
  // A runtime older than speculative decoding leaves the mode unset.
  return Object.freeze({ ...values, speculativeMode: values.speculativeMode || "none" });
}

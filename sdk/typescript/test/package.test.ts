// Without a runtime: both builds load, the error table, argument checks and the value types.

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

import * as kakeya from "kakeya";
import {
  Client, ERROR_OF_STATUS, errorFromStatus, InternalError, KakeyaError, RuntimeUnavailableError, SessionNotFoundError,
  Status,
} from "kakeya";
import type { PlainReply, RuntimeInfo, SessionInfo, SessionSummary } from "kakeya";

import type {
  GetRuntimeInfoResponse, GetSessionInfoResponse, SessionSummary as SessionSummaryReply,
} from "../src/gen/kakeya/v1/runtime.js";
import { bounded } from "./helpers.js";

// SessionInfo, SessionSummary and RuntimeInfo name exactly the fields of their replies (as plainValues copies
// them): a field added to the .proto fails this file's compilation until the interface has it.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
const sessionInfoFields: Equal<SessionInfo, PlainReply<GetSessionInfoResponse>> = true;
const runtimeInfoFields: Equal<RuntimeInfo, PlainReply<GetRuntimeInfoResponse>> = true;
const sessionSummaryFields: Equal<SessionSummary, PlainReply<SessionSummaryReply>> = true;

test("the value interfaces match the replies", () => {
  assert.ok(sessionInfoFields && runtimeInfoFields && sessionSummaryFields);
});

test("the CommonJS build exports what the ES module build does", () => {
  const required = createRequire(import.meta.url)("kakeya") as typeof kakeya;
  assert.deepEqual(Object.keys(required).sort(), Object.keys(kakeya).sort());
  assert.equal(typeof required.Client, "function");
  assert.equal(new required.SessionNotFoundError("x").code, Status.NOT_FOUND);
});

test("one table maps status codes to error classes", () => {
  const expected = new Map<Status, string>([
    [Status.NOT_FOUND, "SessionNotFoundError"], [Status.INVALID_ARGUMENT, "InvalidArgumentError"],
    [Status.FAILED_PRECONDITION, "FailedPreconditionError"], [Status.RESOURCE_EXHAUSTED, "ResourceExhaustedError"],
    [Status.UNAUTHENTICATED, "UnauthenticatedError"], [Status.UNAVAILABLE, "RuntimeUnavailableError"],
    [Status.DEADLINE_EXCEEDED, "DeadlineExceededError"], [Status.INTERNAL, "InternalError"],
  ]);
  assert.deepEqual(new Map([...ERROR_OF_STATUS].map(([code, kind]) => [code, kind.name])), expected);
  for (const [code, name] of expected) {
    const error = errorFromStatus(code, "the server's words");
    assert.ok(error instanceof KakeyaError && error instanceof Error);
    assert.deepEqual([error.name, error.code, error.message], [name, code, "the server's words"]);
  }
  // A status the SDK does not know becomes InternalError and keeps its code; no details: the code's name.
  const unknown = errorFromStatus(Status.DATA_LOSS, "");
  assert.ok(unknown instanceof InternalError);
  assert.deepEqual([unknown.code, unknown.message], [Status.DATA_LOSS, "DATA_LOSS"]);
  assert.equal(new kakeya.SessionClosedError("closed").code, undefined);
});

test("an unreachable runtime is RuntimeUnavailableError", async () => {
  const client = new Client("127.0.0.1:1");
  try {
    const error = await bounded(client.runtimeInfo()).catch((caught: unknown) => caught);
    assert.ok(error instanceof RuntimeUnavailableError, String(error));
    assert.equal(error.code, Status.UNAVAILABLE);
  } finally {
    await client.close();
  }
});

test("options are checked before any connection", async () => {
  assert.throws(() => new Client("127.0.0.1:1", { timeoutMs: 0 }), RangeError);
  assert.throws(() => new Client("127.0.0.1:1", { maxTokensPerMessage: 0 }), RangeError);
  const client = new Client("127.0.0.1:1", { timeoutMs: null });
  assert.equal(client.timeoutMs, null);
  const session = client.attachSession("0".repeat(32));
  assert.throws(() => session.generate(-1), kakeya.InvalidArgumentError);
  assert.throws(() => session.generate(4, { seed: -1 }), kakeya.InvalidArgumentError);
  assert.throws(() => session.generate(4, { minTokensPerMessage: 65 }), RangeError);
  await assert.rejects(client.createSession({ eosTokenIds: [2 ** 32] }), kakeya.InvalidArgumentError);
  await client.close();
  await client.close();
  assert.equal(client.isClosed, true);
  await assert.rejects(session.info(), kakeya.ClientClosedError);
  assert.throws(() => session.generate(4), kakeya.ClientClosedError);
  assert.ok(!(new SessionNotFoundError("x") instanceof InternalError));
});

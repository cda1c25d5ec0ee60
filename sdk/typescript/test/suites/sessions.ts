// Sessions, generation, values and typed errors: what integration/test_sdk.py covers for Python.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  Client, FailedPreconditionError, InvalidArgumentError, SessionClosedError, SessionNotFoundError, Status, StopReason,
} from "kakeya";
import type { Session, SessionInfo } from "kakeya";

import { bounded, PROMPT, RAW, soloTokens } from "../helpers.js";

async function rejectsWith(call: () => Promise<unknown>, kind: Function, code: Status | undefined): Promise<Error> {
  let caught: unknown;
  try {
    await bounded(call());
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof kind, `expected ${kind.name}, got ${String(caught)}`);
  assert.equal((caught as { code?: Status }).code, code);
  return caught as Error;
}

export function sessionSuite(address: () => string): void {
  let client: Client;
  before(() => {
    client = new Client(address());
  });
  after(() => client.close());

  test("runtime info describes the embedded model", async () => {
    const info = await bounded(client.runtimeInfo());
    assert.equal(info.vocabSize, 49152);
    assert.deepEqual(info.defaultEosTokenIds, [2]);
    assert.equal(info.maxContextTokens, 8192);
    assert.ok(info.deterministic && info.kvBytesPerToken > 0 && info.maxSessions > 0);
    assert.deepEqual([info.sinkTokens, info.windowTokens, info.activeSessions], [0, 0, 0]);
    assert.equal(info.speculativeMode, "none");
    assert.ok(Object.isFrozen(info) && Object.isFrozen(info.defaultEosTokenIds));
    assert.equal(client.address, address());
    assert.equal(client.timeoutMs, 30_000);
  });

  test("create, inspect and close round trip", async () => {
    const session = await bounded(client.createSession({ eosTokenIds: [49151, 49150], label: "sdk" }));
    assert.match(session.sessionId, /^[0-9a-f]{32}$/);
    assert.equal(session.isClosed, false);
    const info = await bounded(session.info());
    assert.deepEqual([info.historyLength, info.pendingTokens, info.kvLiveBytes], [0, 0, 0]);
    assert.deepEqual([info.kvUsedBytes, info.kvReservedBytes], [0, 0]);
    assert.equal(info.clientLabel, "sdk");
    assert.deepEqual(info.eosTokenIds, [49150, 49151]);
    assert.throws(() => {
      (info as { historyLength: number }).historyLength = 3;
    }, TypeError);
    assert.equal(await bounded(session.close()), 0);
    assert.equal(await bounded(session.close()), 0);
    assert.equal(session.isClosed, true);
  });

  test("a fork continues exactly as its source, then goes its own way", async () => {
    const source = await bounded(client.createSession({ ...RAW, initialTokens: PROMPT }));
    await bounded(source.generate(4).collect());
    const branch = await bounded(source.fork({ label: "branch" }));
    try {
      assert.notEqual(branch.sessionId, source.sessionId);
      assert.equal((await bounded(branch.info())).clientLabel, "branch");
      assert.deepEqual(await bounded(branch.generate(6).collect()), await bounded(source.generate(6).collect()));
      await bounded(source.append([5, 6, 7]));
      assert.equal((await bounded(branch.info())).historyLength + 3, (await bounded(source.info())).historyLength);
    } finally {
      await bounded(branch.close());
      await bounded(source.close());
    }
  });

  test("initial tokens are appended", async () => {
    const session = await bounded(client.createSession({ initialTokens: PROMPT }));
    const info = await bounded(session.info());
    assert.deepEqual([info.historyLength, info.pendingTokens], [PROMPT.length, PROMPT.length]);
    assert.equal(await bounded(session.close()), PROMPT.length);
  });

  test("append, generate and the stream's figures", async () => {
    const session = await bounded(client.createSession(RAW));
    assert.equal(await bounded(session.append(PROMPT.slice(0, 4))), 4);
    assert.equal(await bounded(session.append(PROMPT.slice(4))), PROMPT.length);
    assert.equal(await bounded(session.append([])), PROMPT.length);
    const stream = session.generate(6);
    assert.equal(stream.stopReason, undefined);
    assert.equal(stream.isDone, false);
    const tokens: number[] = [];
    await bounded((async () => {
      for await (const token of stream) tokens.push(token);
    })());
    assert.equal(tokens.length, 6);
    assert.ok(tokens.every(Number.isInteger));
    assert.equal(stream.stopReason, StopReason.MAX_TOKENS);
    assert.equal(stream.isDone, true);
    assert.deepEqual([stream.generatedTokenCount, stream.prefillTokenCount, stream.droppedTokenCount],
      [6, PROMPT.length, 0]);
    assert.ok(stream.prefillDurationSeconds > 0 && stream.prefillDurationSeconds <= stream.totalDurationSeconds);
    assert.throws(() => stream[Symbol.asyncIterator](), /read only once/);
    const info = await bounded(session.info());
    assert.equal(info.historyLength, PROMPT.length + 6);
    assert.equal(info.kvResidentTokens + info.pendingTokens, info.historyLength);
    assert.ok(info.kvLiveBytes > 0);
    assert.equal(info.kvUsedBytes + info.kvReservedBytes, info.kvLiveBytes);
    assert.deepEqual([info.inv1Violations, info.inv2Violations], [0, 0]);
    const more = await bounded(session.generate(3).collect());
    assert.deepEqual([...tokens, ...more], await soloTokens(client, PROMPT, 9));
    assert.equal(await bounded(session.close()), PROMPT.length + 9);
  });

  test("a named EOS id stops the stream, also in a session without the model's", async () => {
    const expected = await soloTokens(client, PROMPT, 8);
    const eos = expected[2]!;
    await client.withSession({ ...RAW, eosTokenIds: [eos], initialTokens: PROMPT }, async (session) => {
      assert.deepEqual((await bounded(session.info())).eosTokenIds, [eos]);
      const stream = session.generate(8);
      assert.deepEqual(await bounded(stream.collect()), expected.slice(0, expected.indexOf(eos) + 1));
      assert.equal(stream.stopReason, StopReason.EOS);
    });
  });

  test("a session stops at the model's EOS ids unless it opts out", async () => {
    const modelEos = (await bounded(client.runtimeInfo())).defaultEosTokenIds;
    assert.ok(modelEos.length > 0);
    // Opted out: no EOS id stops it, and it runs to maxTokens.
    const raw = await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      assert.deepEqual((await bounded(session.info())).eosTokenIds, []);
      const stream = session.generate(8);
      const tokens = await bounded(stream.collect());
      assert.deepEqual([tokens.length, stream.generatedTokenCount, stream.stopReason], [8, 8, StopReason.MAX_TOKENS]);
      return tokens;
    });
    // PROMPT's greedy continuation reaches one of the model's EOS ids before the 8th token.
    const end = raw.findIndex((token) => modelEos.includes(token)) + 1;
    assert.ok(end > 0 && end < 8, `no EOS id of ${modelEos} in the first 7 of ${raw}`);
    // By default (no ids named), the same generation stops right after it.
    await client.withSession({ initialTokens: PROMPT }, async (session) => {
      assert.deepEqual((await bounded(session.info())).eosTokenIds, [...modelEos].sort((a, b) => a - b));
      const stream = session.generate(8);
      const tokens = await bounded(stream.collect());
      assert.deepEqual(tokens, raw.slice(0, end));
      assert.ok(modelEos.includes(tokens.at(-1)!));
      assert.deepEqual([stream.stopReason, stream.generatedTokenCount], [StopReason.EOS, end]);
      assert.equal((await bounded(session.info())).historyLength, PROMPT.length + end);
    });
  });

  test("kvUsedBytes + kvReservedBytes is kvLiveBytes, during a generation and after it", async () => {
    const { kvBytesPerToken } = await bounded(client.runtimeInfo());
    const checkSplit = (info: SessionInfo): void => {
      assert.equal(info.kvUsedBytes + info.kvReservedBytes, info.kvLiveBytes);
      assert.equal(info.kvUsedBytes, info.kvResidentTokens * kvBytesPerToken);
    };
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      const stream = session.generate(1000, { maxTokensPerMessage: 1 });
      const running = await bounded((async () => {
        for await (const _token of stream) return await session.info(); // leaving the loop cancels the generation
        throw new Error("the generation ended before its first token");
      })());
      checkSplit(running);
      // The reservation for 1000 tokens is held while it runs, and mostly not used yet.
      assert.ok(running.kvUsedBytes > 0 && running.kvReservedBytes > running.kvUsedBytes, JSON.stringify(running));
      // Ordered after the cancelled generation, the append answers once it has ended.
      const history = await bounded(session.append([]));
      const after = await bounded(session.info());
      assert.equal(after.historyLength, history);
      checkSplit(after);
      // What the cancelled generation did not use is given back.
      assert.ok(after.kvLiveBytes < running.kvLiveBytes, `${after.kvLiveBytes} >= ${running.kvLiveBytes}`);
    });
  });

  test("seeded sampling is reproducible", async () => {
    const sample = (seed: number | bigint): Promise<number[]> =>
      client.withSession({ ...RAW, initialTokens: PROMPT }, (session) =>
        bounded(session.generate(6, { temperature: 0.9, topP: 0.95, topK: 40, seed }).collect()));
    const first = await sample(2n ** 64n - 1n);
    assert.equal(first.length, 6);
    assert.deepEqual(await sample(2n ** 64n - 1n), first);
    assert.throws(() => client.attachSession("0".repeat(32)).generate(2, { seed: 2n ** 64n }), InvalidArgumentError);
  });

  test("withSession closes the session, also when its body throws", async () => {
    let kept: Session | undefined;
    await client.withSession({ initialTokens: PROMPT }, async (session) => {
      kept = session;
    });
    assert.equal(kept!.isClosed, true);
    await assert.rejects(client.withSession({}, async (session) => {
      kept = session;
      throw new RangeError("inside the block");
    }), /inside the block/);
    await rejectsWith(() => client.attachSession(kept!.sessionId).info(), SessionNotFoundError, Status.NOT_FOUND);
  });

  test("a closed session fails locally, without an RPC", async () => {
    const session = await bounded(client.createSession({ initialTokens: PROMPT }));
    assert.equal(await bounded(session.close()), PROMPT.length);
    await rejectsWith(() => session.append([5]), SessionClosedError, undefined);
    await rejectsWith(() => session.info(), SessionClosedError, undefined);
    await rejectsWith(async () => session.generate(2).collect(), SessionClosedError, undefined);
    // The runtime no longer knows the id, so a second RPC would fail: this close made none.
    assert.equal(await bounded(session.close()), PROMPT.length);
  });

  test("an unknown session is NOT_FOUND, with the server's message", async () => {
    const bogus = client.attachSession("0".repeat(32));
    const calls = [() => bogus.append([5]), () => bogus.info(), () => bogus.close(), () => bogus.generate(2).collect()];
    for (const call of calls) {
      const error = await rejectsWith(call, SessionNotFoundError, Status.NOT_FOUND);
      assert.ok(error.message.includes("0".repeat(32)), error.message);
      assert.equal(error.name, "SessionNotFoundError");
    }
    // An id closed through another handle is gone too.
    const session = await bounded(client.createSession({ initialTokens: PROMPT }));
    assert.equal(await bounded(client.attachSession(session.sessionId).close()), PROMPT.length);
    await rejectsWith(() => session.append([5]), SessionNotFoundError, Status.NOT_FOUND);
  });

  test("invalid arguments leave the history unchanged", async () => {
    await client.withSession({ initialTokens: PROMPT }, async (session) => {
      const error = await rejectsWith(() => session.generate(0).collect(), InvalidArgumentError, Status.INVALID_ARGUMENT);
      assert.match(error.message, /max_tokens/);
      await rejectsWith(() => session.append([5, 49152]), InvalidArgumentError, Status.INVALID_ARGUMENT);
      // Refused before any RPC: not a uint32.
      for (const bad of [-1, 1.5, 2 ** 32, Number.NaN]) {
        await rejectsWith(() => session.append([bad]), InvalidArgumentError, Status.INVALID_ARGUMENT);
      }
      assert.throws(() => session.generate(4, { minTokensPerMessage: 5, maxTokensPerMessage: 4 }), RangeError);
      assert.equal((await bounded(session.info())).historyLength, PROMPT.length);
    });
  });

  test("generate on an empty history fails its precondition", async () => {
    await client.withSession({}, async (session) => {
      await rejectsWith(() => session.generate(2).collect(), FailedPreconditionError, Status.FAILED_PRECONDITION);
    });
  });
}

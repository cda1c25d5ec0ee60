// Streams: cancellation by break, by AbortSignal and by cancel(), deadlines, concurrent sessions,
// and closing the client mid-stream: what integration/test_sdk_streams.py covers for Python.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, ClientClosedError, DeadlineExceededError, Status, StopReason } from "kakeya";
import type { Session } from "kakeya";

import { bounded, PROMPT, RAW, soloTokens } from "../helpers.js";

export function streamSuite(address: () => string): void {
  let client: Client;
  before(() => {
    client = new Client(address());
  });
  after(() => client.close());

  /**
   * After a cancelled generation that streamed `read`: the session is usable, and its history
   * kept the streamed tokens (and any the runtime sampled before the cancel reached it), so the
   * next generation continues the greedy sequence from there.
   */
  async function assertContinues(session: Session, read: number[]): Promise<void> {
    // Waits its turn behind the cancelled generation, so the history has settled.
    const more = await bounded(session.generate(4).collect());
    assert.equal(more.length, 4);
    const kept = (await bounded(session.info())).historyLength - PROMPT.length - 4;
    assert.ok(kept >= read.length && kept < 1000, `kept ${kept}`);
    const expected = await soloTokens(client, PROMPT, kept + 4);
    assert.deepEqual(expected.slice(0, read.length), read);
    assert.deepEqual(expected.slice(kept), more);
  }

  test("leaving for-await early cancels the generation", async () => {
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      // One id a message, so the count of ids received is the count read.
      const stream = session.generate(1000, { maxTokensPerMessage: 1 });
      const read: number[] = [];
      await bounded((async () => {
        for await (const token of stream) {
          read.push(token);
          if (read.length === 3) break;
        }
      })());
      assert.equal(read.length, 3);
      assert.equal(stream.stopReason, StopReason.CANCELLED);
      assert.equal(stream.generatedTokenCount, 3);
      assert.equal(stream.isDone, true);
      await assertContinues(session, read);
    });
  });

  test("aborting the signal cancels the generation and rejects the reader", async () => {
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      const controller = new AbortController();
      const stream = session.generate(1000, { signal: controller.signal });
      const read: number[] = [];
      const reader = (async () => {
        for await (const token of stream) {
          read.push(token);
          if (read.length === 2) controller.abort();
        }
      })();
      await assert.rejects(bounded(reader), { name: "AbortError" });
      assert.equal(read.length, 2);
      assert.equal(stream.stopReason, StopReason.CANCELLED);
      await assertContinues(session, read);
    });
  });

  test("an abort before the first read, or before the call, cancels it", async () => {
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      const controller = new AbortController();
      const stream = session.generate(1000, { signal: controller.signal });
      controller.abort(new Error("changed my mind"));
      await assert.rejects(bounded(stream.collect()), /changed my mind/);
      assert.equal(stream.stopReason, StopReason.CANCELLED);
      const early = session.generate(1000, { signal: AbortSignal.abort() });
      await assert.rejects(bounded(early.collect()), { name: "AbortError" });
      await assertContinues(session, []);
    });
  });

  test("cancel() ends the reading normally", async () => {
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      const stream = session.generate(1000);
      const read: number[] = [];
      await bounded((async () => {
        for await (const token of stream) {
          read.push(token);
          stream.cancel();
        }
      })());
      assert.equal(read.length, 1);
      assert.equal(stream.stopReason, StopReason.CANCELLED);
      await assertContinues(session, read);
    });
  });

  test("a generation's deadline", async () => {
    await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
      const stream = session.generate(1000, { timeoutMs: 50 });
      await assert.rejects(bounded(stream.collect()),
        (error: unknown) => error instanceof DeadlineExceededError && error.code === Status.DEADLINE_EXCEEDED);
      assert.ok((await bounded(session.info())).historyLength < PROMPT.length + 1000);
    });
  });

  test("8 concurrent sessions each get their solo greedy tokens", async () => {
    const prompts = Array.from({ length: 8 }, (_, i) => [...PROMPT, ...Array<number>(1 + (i % 3)).fill(300 + 7 * i)]);
    const solo: number[][] = [];
    for (const prompt of prompts) solo.push(await soloTokens(client, prompt, 8));
    // Half the streams hold tokens for messages of 3 (and half read one id a message): the same
    // ids, one at a time, come out.
    const runs = prompts.map((prompt, i) => client.withSession({ ...RAW, initialTokens: prompt }, (session) =>
      session.generate(8, i % 2 ? { minTokensPerMessage: 3 } : { maxTokensPerMessage: 1 }).collect()));
    assert.deepEqual(await bounded(Promise.all(runs)), solo);
  });

  test("closing the client cancels its calls and refuses new ones", async () => {
    const closing = new Client(address());
    const session = await bounded(closing.createSession({ ...RAW, initialTokens: PROMPT }));
    const stream = session.generate(1000);
    const read: number[] = [];
    const reader = (async () => {
      for await (const token of stream) {
        read.push(token);
        if (read.length === 1) await closing.close();
      }
    })();
    await assert.rejects(bounded(reader), ClientClosedError);
    assert.equal(closing.isClosed, true);
    await assert.rejects(bounded(session.info()), ClientClosedError);
    await assert.rejects(bounded(closing.runtimeInfo()), ClientClosedError);
    await closing.close();
    // The session outlives its client; the close is ordered after the cancelled generation, so it
    // counts the token that was read.
    assert.ok(await bounded(client.attachSession(session.sessionId).close()) >= PROMPT.length + 1);
  });
}

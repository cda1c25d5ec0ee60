// A runtime on a unix socket that requires an API key (it accepts two): the key travels on every
// call (unary and streaming), a missing or wrong key is UnauthenticatedError, and each key lists
// only its own sessions.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { Client, Status, UnauthenticatedError } from "kakeya";
import type { Session } from "kakeya";

import { bounded, PACKAGE, PROMPT, RAW, TIMEOUT_MS } from "../helpers.js";

export function authAndUnixSuite(address: () => string, apiKey: string, secondKey: string): void {
  test("a keyed client works over the unix socket", async () => {
    assert.match(address(), /^unix:\//);
    const client = new Client(address(), { apiKey, timeoutMs: 60_000 });
    try {
      assert.equal(client.timeoutMs, 60_000);
      assert.equal((await bounded(client.runtimeInfo())).vocabSize, 49152);
      await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
        assert.equal((await bounded(session.generate(2).collect())).length, 2);
        assert.equal((await bounded(session.info())).historyLength, PROMPT.length + 2);
      });
    } finally {
      await client.close();
    }
  });

  test("a missing or wrong key is UNAUTHENTICATED", async () => {
    for (const key of [undefined, "other-key"]) {
      const stranger = new Client(address(), { apiKey: key });
      try {
        const calls: Array<() => Promise<unknown>> = [() => stranger.createSession(), () => stranger.runtimeInfo(),
          () => stranger.listSessions(), () => stranger.attachSession("0".repeat(32)).generate(2).collect()];
        for (const call of calls) {
          await assert.rejects(bounded(call()),
            (error: unknown) => error instanceof UnauthenticatedError && error.code === Status.UNAUTHENTICATED);
        }
      } finally {
        await stranger.close();
      }
    }
  });

  test("listSessions lists exactly the caller's own sessions", async () => {
    const mine = new Client(address(), { apiKey });
    const theirs = new Client(address(), { apiKey: secondKey });
    const opened: Session[] = [];
    const open = async (client: Client, options: Parameters<Client["createSession"]>[0]): Promise<Session> => {
      const session = await bounded(client.createSession(options));
      opened.push(session);
      return session;
    };
    try {
      const first = await open(mine, { ...RAW, initialTokens: PROMPT, label: "first" });
      await bounded(first.generate(2).collect());
      const second = await open(mine, { label: "second" });
      const other = await open(theirs, { label: "other" });
      const listed = await bounded(mine.listSessions());
      // Oldest first, with the history and KV bytes the sessions report.
      assert.deepEqual(listed.map((entry) => [entry.sessionId, entry.clientLabel, entry.historyLength, entry.busy]),
        [[first.sessionId, "first", PROMPT.length + 2, false], [second.sessionId, "second", 0, false]]);
      assert.deepEqual(listed.map((entry) => entry.kvLiveBytes),
        [(await bounded(first.info())).kvLiveBytes, (await bounded(second.info())).kvLiveBytes]);
      assert.ok(listed[0]!.kvLiveBytes > 0);
      assert.ok(listed.every((entry) => Object.isFrozen(entry) && entry.idleSeconds >= 0));
      assert.throws(() => {
        (listed[0] as { busy: boolean }).busy = true;
      }, TypeError);
      assert.deepEqual((await bounded(theirs.listSessions())).map((entry) => [entry.sessionId, entry.clientLabel]),
        [[other.sessionId, "other"]]);
      // A session with a generation running is busy, and not idle.
      const stream = first.generate(1000, { maxTokensPerMessage: 1 });
      const running = await bounded((async () => {
        for await (const _token of stream) return await mine.listSessions(); // leaving the loop cancels it
        throw new Error("the generation ended before its first token");
      })());
      assert.deepEqual(running.map((entry) => [entry.sessionId, entry.busy]),
        [[first.sessionId, true], [second.sessionId, false]]);
      assert.equal(running[0]!.idleSeconds, 0);
      assert.ok(running[0]!.historyLength > PROMPT.length + 2);
      for (const session of opened) await bounded(session.close());
      assert.deepEqual(await bounded(mine.listSessions()), []);
      assert.deepEqual(await bounded(theirs.listSessions()), []);
    } finally {
      // Whatever failed above, no session outlives the test (closing twice makes no RPC).
      await bounded(Promise.allSettled(opened.map((session) => session.close())));
      await Promise.all([mine.close(), theirs.close()]);
    }
  });

  test("the chat example runs its three turns", async () => {
    const script = join(PACKAGE, ".test-build", "examples", "chat.js");
    const { stdout } = await bounded(promisify(execFile)(process.execPath,
      [script, "--address", address(), "--api-key", apiKey, "--max-tokens", "6"], { timeout: TIMEOUT_MS }));
    const summaries = [...stdout.matchAll(/\[(\w+): (\d+) tokens, prefill (\d+); history (\d+) tokens\]/g)];
    assert.equal(summaries.length, 3, stdout);
    const [reason, generated, prefill, history] = summaries[0]!.slice(1);
    assert.equal(Number(prefill), 27);
    // The reply stays in the history, closed by the id the example appends when it was cut.
    assert.equal(Number(history), 27 + Number(generated) + (reason === "EOS" ? 0 : 1));
  });
}

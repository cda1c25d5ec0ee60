// A runtime on a unix socket that requires an API key: the key travels on every call (unary and
// streaming), and a missing or wrong key is UnauthenticatedError.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { Client, Status, UnauthenticatedError } from "kakeya";

import { bounded, PACKAGE, PROMPT, TIMEOUT_MS } from "../helpers.js";

export function authAndUnixSuite(address: () => string, apiKey: string): void {
  test("a keyed client works over the unix socket", async () => {
    assert.match(address(), /^unix:\//);
    const client = new Client(address(), { apiKey, timeoutMs: 60_000 });
    try {
      assert.equal(client.timeoutMs, 60_000);
      assert.equal((await bounded(client.runtimeInfo())).vocabSize, 49152);
      await client.withSession({ initialTokens: PROMPT }, async (session) => {
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
          () => stranger.attachSession("0".repeat(32)).generate(2).collect()];
        for (const call of calls) {
          await assert.rejects(bounded(call()),
            (error: unknown) => error instanceof UnauthenticatedError && error.code === Status.UNAUTHENTICATED);
        }
      } finally {
        await stranger.close();
      }
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

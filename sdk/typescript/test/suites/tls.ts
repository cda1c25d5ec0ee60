// A runtime serving TLS with a self-signed certificate: a client given it as a trust root (a path
// or PEM bytes) works; a plaintext client, or one that trusts only the system's roots, cannot connect.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Client, RuntimeUnavailableError } from "kakeya";

import { bounded, PROMPT, RAW } from "../helpers.js";

export function tlsSuite(address: () => string, certificate: string): void {
  test("a client that trusts the certificate works over TLS", async () => {
    assert.match(address(), /^localhost:\d+$/);
    for (const rootCertificates of [certificate, readFileSync(certificate)]) {
      const client = new Client(address(), { rootCertificates });
      try {
        await client.withSession({ ...RAW, initialTokens: PROMPT }, async (session) => {
          assert.equal((await bounded(session.generate(3).collect())).length, 3);
        });
      } finally {
        await client.close();
      }
    }
  });

  test("plaintext, or TLS with the system's roots, cannot connect", async () => {
    for (const tls of [false, true]) {
      const client = new Client(address(), { tls, timeoutMs: 10_000 });
      try {
        await assert.rejects(bounded(client.createSession()), RuntimeUnavailableError);
      } finally {
        await client.close();
      }
    }
  });
}

// The SDK against real runtimes on the embedded model: one on TCP (port 0), one on a unix socket
// that accepts two API keys, and one serving TLS; all started at once for the whole file and
// always stopped.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe } from "node:test";

import { startServer } from "./helpers.js";
import type { ServerHandle } from "./helpers.js";
import { authAndUnixSuite } from "./suites/auth.js";
import { sessionSuite } from "./suites/sessions.js";
import { streamSuite } from "./suites/streams.js";
import { tlsSuite } from "./suites/tls.js";

export const API_KEY = "sdk-key";
/** The keyed runtime's second key: its sessions are not API_KEY's. */
export const SECOND_KEY = "second-key";

export interface Servers {
  tcp: ServerHandle;
  /** On a unix socket, with --api-key API_KEY --api-key SECOND_KEY. */
  keyed: ServerHandle;
  /** On localhost, with a self-signed certificate (CERTIFICATE). */
  tls: ServerHandle;
}

const servers: Partial<Servers> = {};
const scratch = mkdtempSync(join(tmpdir(), "kakeya-ts-"));
const CERTIFICATE = join(scratch, "cert.pem");
const KEY = join(scratch, "key.pem");

before(async () => {
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", KEY, "-out", CERTIFICATE,
    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"], { stdio: "ignore", timeout: 60_000 });
  const names = ["tcp", "keyed", "tls"] as const;
  const started = await Promise.allSettled([
    startServer(["--port", "0"]),
    startServer(["--unix-socket", join(scratch, "k.sock"), "--api-key", API_KEY, "--api-key", SECOND_KEY]),
    startServer(["--host", "localhost", "--port", "0", "--tls-cert", CERTIFICATE, "--tls-key", KEY]),
  ]);
  started.forEach((result, i) => {
    if (result.status === "fulfilled") servers[names[i]!] = result.value;
  });
  for (const result of started) {
    if (result.status === "rejected") throw result.reason;
  }
});

after(async () => {
  await Promise.all([servers.tcp?.stop(), servers.keyed?.stop(), servers.tls?.stop()]);
  rmSync(scratch, { recursive: true, force: true });
});

const ready = (): Servers => {
  if (!servers.tcp || !servers.keyed || !servers.tls) throw new Error("the servers did not start");
  return servers as Servers;
};

describe("sessions", () => sessionSuite(() => ready().tcp.address));
describe("streams", () => streamSuite(() => ready().tcp.address));
describe("API keys and unix sockets", () => authAndUnixSuite(() => ready().keyed.address, API_KEY, SECOND_KEY));
describe("TLS", () => tlsSuite(() => ready().tls.address, CERTIFICATE));

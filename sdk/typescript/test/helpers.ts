// Starts a real `kakeya serve` (the Python runtime, on the embedded model) as a child process for
// the integration tests, and bounds every wait.

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import type { Client } from "kakeya";

/** The package folder (tests run from .test-build/test/). */
export const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPO = resolve(PACKAGE, "..", "..");
/** Every await in a test is bounded: a hang fails the test rather than stalling the suite. */
export const TIMEOUT_MS = 120_000;
/** Loading the model takes seconds, or longer on a busy machine. */
export const READY_TIMEOUT_MS = 300_000;
/** Its greedy continuation reaches the model's EOS (<|im_end|>, id 2) at the 4th token. */
export const PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2];
/** Sessions that must run to maxTokens: no EOS stop, not even the model's own. */
export const RAW = { defaultEos: false } as const;

/** `promise`, or a rejection once `ms` have passed. */
export async function bounded<T>(promise: Promise<T>, ms = TIMEOUT_MS, what = "the call"): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What a session alone on the runtime generates from `prompt` (greedy, to maxTokens: no EOS stop). */
export async function soloTokens(client: Client, prompt: number[], maxTokens: number): Promise<number[]> {
  return client.withSession({ ...RAW, initialTokens: prompt }, (session) =>
    bounded(session.generate(maxTokens).collect()));
}

export function pythonPath(): string {
  const python = process.env.KAKEYA_PYTHON ?? resolve(REPO, ".venv", "bin", "python");
  if (!existsSync(python)) {
    throw new Error(`no Python runtime at ${python}: run ./ops/setup.sh, or set KAKEYA_PYTHON`);
  }
  return python;
}

export interface ServerHandle {
  readonly address: string;
  /** Stops the server: SIGTERM, then SIGKILL if it has not exited within a few seconds. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();

function killServers(): void {
  for (const child of running) {
    child.kill("SIGKILL");
  }
}

// Whatever ends the test process (the runner's timeout sends a signal), no server outlives it.
process.on("exit", killServers);
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.once(signal, () => {
    killServers();
    process.exit(128 + (signal === "SIGHUP" ? 1 : signal === "SIGINT" ? 2 : 15));
  });
}

/**
 * Starts `kakeya serve` with `args` (plus JSON logs, no metrics endpoint) and resolves once it
 * logs `server_ready`, which it does only after the model is loaded; with its address.
 */
export function startServer(args: string[]): Promise<ServerHandle> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("KAKEYA_")));
  const child = spawn(pythonPath(), [
    "-m", "kakeya.runtime.server.cli", "serve", "--log-format", "json", "--metrics-port", "-1", "--grace-s", "1",
    ...args,
  ], { cwd: REPO, env: { ...env, PYTHONUNBUFFERED: "1" }, stdio: ["ignore", "ignore", "pipe"] });
  running.add(child);
  const exited = new Promise<void>((resolveExit) => child.once("exit", () => {
    running.delete(child);
    resolveExit();
  }));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
  };
  let log = "";
  return new Promise<ServerHandle>((resolveReady, rejectReady) => {
    const fail = (why: string): void => {
      clearTimeout(timer);
      void stop().then(() => rejectReady(new Error(`${why}; its log ends:\n${log.slice(-4000)}`)));
    };
    const timer = setTimeout(() => fail(`kakeya serve was not ready within ${READY_TIMEOUT_MS} ms`),
      READY_TIMEOUT_MS);
    let partial = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      log += chunk;
      const lines = (partial + chunk).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        const event = parseEvent(line);
        if (event?.event === "server_ready" && typeof event.address === "string") {
          clearTimeout(timer);
          resolveReady({ address: event.address, stop });
        }
      }
    });
    child.once("exit", (code, signal) => fail(`kakeya serve exited (${code ?? signal}) before it was ready`));
    child.once("error", (error) => fail(`kakeya serve could not start: ${error.message}`));
  });
}

function parseEvent(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith("{")) {
    return undefined;
  }
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

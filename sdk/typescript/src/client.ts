/** The client: one connection to a runtime, and the factory of sessions on it. */

import { CreateSessionRequest, GetRuntimeInfoRequest, ListSessionsRequest } from "./gen/kakeya/v1/runtime.js";
import { closeAfter, Session } from "./session.js";
import { tokenIdList, Transport } from "./transport.js";
import { runtimeInfoOfReply, sessionSummaryOfReply } from "./types.js";
import type { RuntimeInfo, SessionSummary } from "./types.js";

export const DEFAULT_ADDRESS = "127.0.0.1:50051";
export const DEFAULT_TIMEOUT_MS = 30_000;
/** A reader that falls behind (many streams in one process) catches up in fewer messages. */
export const DEFAULT_TOKENS_PER_MESSAGE = 64;

export interface ClientOptions {
  /** Sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string | undefined;
  /** Opens a TLS channel; without rootCertificates the system's trust roots verify the server. */
  tls?: boolean | undefined;
  /** PEM trust roots, as bytes or a file path; implies tls. */
  rootCertificates?: Uint8Array | string | undefined;
  /** Deadline of each unary call (null: none). Generations have none unless given one. */
  timeoutMs?: number | null | undefined;
  /**
   * Tokens sampled while this client was behind in reading a generation may come up to this many
   * a message (1: one a message). Iterating a generation yields single token ids either way.
   */
  maxTokensPerMessage?: number | undefined;
}

export interface SessionOptions {
  /**
   * Generation stops after emitting any of these ids. Without them, after the model's own EOS ids
   * (RuntimeInfo's defaultEosTokenIds), unless defaultEos is false.
   */
  eosTokenIds?: Iterable<number> | undefined;
  /**
   * Without eosTokenIds, stop at the model's own EOS ids (default true); false: no EOS stop at all,
   * so generations run to maxTokens. Named eosTokenIds apply either way.
   */
  defaultEos?: boolean | undefined;
  /** Appended right after the session is created. */
  initialTokens?: Iterable<number> | undefined;
  label?: string | undefined;
}

/**
 * A connection to one runtime at `address` ("host:port" or "unix:/path"). Closing the client does
 * not close its sessions: they live in the runtime until closed or evicted.
 */
export class Client {
  readonly #transport: Transport;

  constructor(address: string = DEFAULT_ADDRESS, options: ClientOptions = {}) {
    this.#transport = new Transport(address, {
      apiKey: options.apiKey,
      timeoutMs: options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs,
      tls: options.tls ?? false,
      rootCertificates: options.rootCertificates,
      maxTokensPerMessage: options.maxTokensPerMessage ?? DEFAULT_TOKENS_PER_MESSAGE,
    });
  }

  get address(): string {
    return this.#transport.address;
  }

  get timeoutMs(): number | null {
    return this.#transport.timeoutMs;
  }

  get isClosed(): boolean {
    return this.#transport.isClosed;
  }

  /**
   * Opens a session; `initialTokens` are appended. Generation stops after any of `eosTokenIds`;
   * without them, after the model's own EOS ids, or never with `defaultEos: false`.
   */
  async createSession(options: SessionOptions = {}): Promise<Session> {
    const eosTokenIds = tokenIdList(options.eosTokenIds ?? [], "EOS token id");
    const initialTokens = tokenIdList(options.initialTokens ?? []);
    const noDefaultEos = !(options.defaultEos ?? true);
    const reply = await this.#transport.unary("createSession",
      CreateSessionRequest.create({ clientLabel: options.label ?? "", eosTokenIds, noDefaultEos }));
    const session = new Session(this.#transport, reply.sessionId);
    if (initialTokens.length > 0) {
      // A session whose first append failed is of no use to the caller: don't leak it.
      try {
        await session.append(initialTokens);
      } catch (error) {
        await closeAfter(session, true);
        throw error;
      }
    }
    return session;
  }

  /** Runs `body` with a new session and closes the session when it settles, however it settles. */
  async withSession<T>(options: SessionOptions, body: (session: Session) => Promise<T>): Promise<T> {
    const session = await this.createSession(options);
    let result: T;
    try {
      result = await body(session);
    } catch (error) {
      await closeAfter(session, true);
      throw error;
    }
    await session.close();
    return result;
  }

  /** A handle on an existing session, e.g. one created by an earlier connection. No RPC is made. */
  attachSession(sessionId: string): Session {
    return new Session(this.#transport, sessionId);
  }

  async runtimeInfo(): Promise<RuntimeInfo> {
    return runtimeInfoOfReply(await this.#transport.unary("getRuntimeInfo", GetRuntimeInfoRequest.create()));
  }

  /**
   * The sessions this client's API key created (every session when the runtime has no keys),
   * oldest first, whichever connection created them.
   */
  async listSessions(): Promise<SessionSummary[]> {
    const reply = await this.#transport.unary("listSessions", ListSessionsRequest.create());
    return reply.sessions.map(sessionSummaryOfReply);
  }

  /** Closes the connection; calls in flight are cancelled. Closing twice is harmless. */
  async close(): Promise<void> {
    this.#transport.close();
  }
}

// Types for pgpush.js, the pgpush browser client.

/** A transport the client can use, in the order it tries them by default. */
export type Transport = 'websocket' | 'sse' | 'poll';

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * `T` when `JSON.stringify` keeps it as it is: strings, numbers, booleans, null, and arrays and
 * objects of them — your own interfaces and types included. Functions, symbols, bigints and
 * `undefined` values are not (an optional member may be left out).
 */
export type JsonCompatible<T> = T extends string | number | boolean | null
  ? T
  : T extends ((...args: never[]) => unknown) | bigint | symbol | undefined
    ? never
    : T extends readonly unknown[]
      ? { [I in keyof T]: JsonCompatible<T[I]> }
      : T extends object
        ? { [K in keyof T]: JsonCompatible<T[K]> }
        : never;

export interface PgPushOptions {
  /** The pgpush server (or nginx in front of it); default: the page's origin. */
  url?: string | URL;
  /** Channels to subscribe to at connect. */
  channels?: Iterable<string>;
  /** Resume after this cursor (the last durable message a previous client saw). */
  cursor?: string | null;
  /** Transports to try, in order; default `['websocket', 'sse', 'poll']`. */
  transports?: Transport[];
  /** Connect in the constructor; default true. */
  autoConnect?: boolean;
  /** Reconnect backoff bounds (jittered, doubling per failure); default 250 and 15000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A connection that is not live within this long counts as failed; default 5000. */
  connectTimeoutMs?: number;
  /** How long a long poll waits for a message (0 to 25); default 25. */
  pollWaitSeconds?: number;
  /** How long a WebSocket publish waits for its acknowledgement; default 10000. */
  publishTimeoutMs?: number;
  /** A token (JWT) for servers that require one, or a function giving one. The function is
   *  called before every connection attempt, and on a live WebSocket shortly before the token's
   *  `exp` (the new token is sent in-band, so the connection stays open); over SSE and polling the
   *  client reconnects with a fresh token when the old one runs out. Sent as `?token=` on
   *  WebSocket, SSE and polls, as `Authorization: Bearer` on HTTP publishes. */
  token?: string | (() => string | Promise<string>);
  /** Start each channel with its last `history` durable messages (at most 1000), then live,
   *  when there is no cursor yet; with a cursor the client resumes after it instead. */
  history?: number | null;
  /** Be present in the channels (identified by the token's `sub` and `info`) and receive their
   *  `join` and `leave` events. WebSocket and SSE only: over polling the client is not present. */
  presence?: boolean;
  /** A server-side filter for every channel: only matching messages are sent
   *  (docs/protocol.md#filters). Change it with `setFilter`. */
  filter?: Filter | null;
}

/** A server-side filter (docs/protocol.md#filters). */
export type Filter =
  | { path: string; op: 'eq' | 'ne' | 'in'; value: Json }
  | { path: string; op: 'lt' | 'lte' | 'gt' | 'gte'; value: number | string }
  | { path: string; op: 'exists' }
  | { path: string; op: 'within'; value: [west: number, south: number, east: number, north: number] }
  | { and: Filter[] }
  | { or: Filter[] }
  | { not: Filter };

/** A connection present in a channel. */
export interface PresentClient {
  /** The connection's id, unique in the cluster. */
  id: string;
  /** Its token's `sub`, or null. */
  user: string | null;
  /** Its token's `info` object, or null. */
  info: { [key: string]: Json } | null;
}

/** A connection joined or left a channel. */
export interface PresenceChange {
  channel: string;
  client: PresentClient;
}

/**
 * A message on a subscribed channel. `T` is what you know the payloads to be (see
 * `PgPush<T>`); the server only promises JSON.
 */
export interface PgPushMessage<T = unknown> {
  channel: string;
  /** The payload: the published JSON value, or the text as a string when it was not JSON. */
  data: T;
  /** Set on durable messages: their position; the client resumes after it. */
  cursor?: string;
}

export interface PgPushEvents<T = unknown> {
  message: PgPushMessage<T>;
  /** A connection became present in a channel (this client's own join included). */
  join: PresenceChange;
  /** A connection left a channel (disconnected, unsubscribed, or its node died: within 10 s). */
  leave: PresenceChange;
  /** The server unsubscribed this client's user from `channels` (`pgpush.unsubscribe`). */
  unsubscribed: { channels: string[] };
  /** The subscription is live on `transport`. */
  connected: { transport: Transport };
  /** The live connection ended; the client reconnects in `retryInMs`. After code 4002 (the
   *  server disconnected the user) or 4003 (the token was revoked) it reconnects only if the
   *  token function gives a different token; otherwise it closes with an `error` `disconnected`. */
  disconnected: { transport: Transport; code: number; reason: string; retryInMs: number };
  /**
   * Reload your state: the events after your cursor are gone. `reason` is `cursor expired`
   * (older than the server's retention) or `history changed` (PostgreSQL lost events you may
   * have received: a failover to an asynchronous standby, a restore from a backup). Messages
   * that follow continue from the new history.
   */
  reset: { reason: 'cursor expired' | 'history changed' | string };
  error: PgPushError;
}

/** A refusal from the server or a local failure; `code` as in docs/protocol.md. */
export class PgPushError extends Error {
  constructor(code: string, reason: string, status?: number);
  readonly code: string;
  readonly reason: string;
  /** The HTTP status, for refusals of HTTP requests. */
  readonly status?: number;
}

/**
 * A client. `T` types the `data` of the messages it receives (`new PgPush<Order>(...)`); it is
 * your promise about the channels' payloads, not checked at run time.
 */
export class PgPush<T = unknown> {
  constructor(options?: PgPushOptions);
  /** `idle`, `connecting`, `connected` or `closed`. */
  readonly state: 'idle' | 'connecting' | 'connected' | 'closed';
  /** The transport of the live connection, or null. */
  readonly transport: Transport | null;
  /** The position of the last durable message received (resume point). */
  cursor: string | null;
  /** The subscribed channels. */
  readonly channels: ReadonlySet<string>;
  /** This connection's id in its channels' presence, once subscribed with `presence`. */
  readonly presenceId: string | null;
  readonly url: URL;
  on<E extends keyof PgPushEvents<T>>(
    event: E,
    handler: (detail: PgPushEvents<T>[E]) => void,
  ): () => void;
  off<E extends keyof PgPushEvents<T>>(event: E, handler: (detail: PgPushEvents<T>[E]) => void): void;
  connect(): void;
  close(): void;
  subscribe(channels: string | string[]): void;
  unsubscribe(channels: string | string[]): void;
  /** The server-side filter of every channel, or null. */
  readonly filter: Filter | null;
  /** Replaces the filter (null: every message); the next message is matched against it. */
  setFilter(filter: Filter | null): void;
  /** Publishes a JSON value (any JSON-compatible value, your interfaces included); resolves to
   *  the event's cursor for durable publishes. */
  publish<D>(
    channel: string,
    data: D & JsonCompatible<D>,
    options?: { mode?: 'durable' | 'ephemeral' },
  ): Promise<{ cursor?: string }>;
  /** The last `limit` (default 50, at most 1000) durable messages of `channel` before the cursor
   *  `before` (default: the newest), oldest first; `cursor` is where to go on live from. */
  history(
    channel: string,
    options?: { limit?: number; before?: string; filter?: Filter },
  ): Promise<{ messages: PgPushMessage<T>[]; cursor: string | null }>;
  /** Who is present in `channel`, on every node of the cluster. */
  presence(channel: string): Promise<{ channel: string; count: number; clients: PresentClient[] }>;
}

// pgpush.js: the pgpush browser client (ES module, no dependencies). Protocol: docs/protocol.md.
//
//   import { PgPush } from '/pgpush.js';
//   const client = new PgPush({ channels: ['chat'] });
//   client.on('message', (m) => console.log(m.channel, m.data, m.cursor));
//   await client.publish('chat', { text: 'hello' });
//   const { messages } = await client.history('chat', { limit: 50 });
//   const { clients } = await client.presence('chat');
//
// WebSocket first; a transport that cannot connect is given up for Server-Sent Events, then long
// polling. Every reconnect resumes after the last durable message's cursor, so a dropped
// connection or a lost node never loses or repeats a durable message.

const ALL_TRANSPORTS = ['websocket', 'sse', 'poll'];
// Close codes after which the same token is not used again: the server disconnected its user
// (4002) or revoked it (4003).
const REFUSED_TOKEN_CLOSES = new Set([4002, 4003]);

/** A refusal from the server (`code` as in docs/protocol.md) or a local failure. */
export class PgPushError extends Error {
  constructor(code, reason, status) {
    super(`${code}: ${reason}`);
    this.name = 'PgPushError';
    this.code = code;
    this.reason = reason;
    this.status = status;
  }
}

/** One client: a set of channels, one live connection at a time, one cursor. */
export class PgPush {
  constructor(options = {}) {
    const base = options.url ?? (globalThis.location ? globalThis.location.href : undefined);
    if (!base) throw new TypeError('PgPush: options.url is required outside a browser page');
    this.url = new URL('/', base);
    this.transports = (options.transports ?? ALL_TRANSPORTS).filter((t) => ALL_TRANSPORTS.includes(t));
    if (this.transports.length === 0) throw new TypeError('PgPush: no usable transport given');
    this.channels = new Set(options.channels ?? []);
    this.cursor = options.cursor ?? null;
    this.minBackoffMs = options.minBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? 15000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    this.pollWaitSeconds = options.pollWaitSeconds ?? 25;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10000;
    // The last n durable messages of each channel before live ones, when there is no cursor yet.
    this._history = options.history ?? null;
    // Be present in the channels and receive their `join` and `leave` events (WebSocket, SSE).
    this._presence = options.presence === true;
    /** The server-side filter of every channel (docs/protocol.md#filters), or null. */
    this.filter = options.filter ?? null;
    /** This connection's id in the channels' presence (set once subscribed with presence). */
    this.presenceId = null;
    this._refusedToken = null;
    // A token string, or a function giving one (called before every connection attempt, so a
    // connection closed because its token expired comes back with a fresh one).
    this._tokenSource = options.token ?? null;
    this._token = typeof this._tokenSource === 'string' ? this._tokenSource : null;
    /** `idle`, `connecting`, `connected` or `closed`. */
    this.state = 'idle';
    /** The transport of the live connection (`websocket`, `sse`, `poll`), or null. */
    this.transport = null;
    this._handlers = new Map();
    this._transportIndex = 0;
    this._failures = 0;
    this._worked = new Set();
    this._connection = null;
    this._attempt = null;
    this._retryTimer = null;
    this._refreshTimer = null;
    this._pending = new Map();
    this._nextRef = 1;
    if (options.autoConnect !== false) this.connect();
  }

  /** Calls `handler(detail)` on `message`, `join`, `leave`, `unsubscribed`, `connected`,
   *  `disconnected`, `reset` or `error`; returns a function that removes it. */
  on(event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this._handlers.get(event)?.delete(handler);
  }

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this.state === 'connecting' || this.state === 'connected') return;
    this.state = 'connecting';
    this._open();
  }

  /** Closes the connection for good; pending publishes over it fail. */
  close() {
    this.state = 'closed';
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    this._drop(new PgPushError('closed', 'the client was closed'));
  }

  /** Adds channels; messages on them follow once the server confirms. */
  subscribe(channels) {
    const added = [].concat(channels).filter((c) => !this.channels.has(c));
    added.forEach((c) => this.channels.add(c));
    if (added.length && this._connection) this._connection.subscribe(added);
  }

  /** Replaces the server-side filter of every channel (null: every message); the next message
   *  is matched against it. A live map calls this on every pan and zoom. */
  setFilter(filter) {
    this.filter = filter ?? null;
    if (this.channels.size && this._connection) this._connection.refilter();
  }

  /** Removes channels. */
  unsubscribe(channels) {
    const removed = [].concat(channels).filter((c) => this.channels.delete(c));
    if (removed.length && this._connection) this._connection.unsubscribe(removed);
  }

  /** Publishes `data` (any JSON value) on `channel`; resolves to `{cursor}` (durable) or `{}`.
   *  Over the WebSocket when it is live, else with an HTTP POST. */
  publish(channel, data, options = {}) {
    const mode = options.mode ?? 'durable';
    const connection = this._connection;
    if (this.state === 'connected' && connection?.name === 'websocket') {
      const ref = `p${this._nextRef++}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this._pending.delete(ref);
          reject(new PgPushError('timeout', 'no answer to the publish'));
        }, this.publishTimeoutMs);
        this._pending.set(ref, { resolve, reject, timer });
        connection.send({ op: 'publish', channel, data, mode, ref });
      });
    }
    return this._postPublish(channel, data, mode);
  }

  /** The last `limit` (default 50) durable messages of `channel` before the cursor `before`,
   *  oldest first: `{messages, cursor}`, `cursor` being where live delivery would go on. */
  async history(channel, options = {}) {
    const query = { channel, limit: options.limit ?? 50 };
    if (options.before) query.before = options.before;
    if (options.filter) query.filter = JSON.stringify(options.filter);
    const body = await this._get('/v1/history', query);
    const messages = body.messages.map((m) => ({ channel: m.channel, data: m.data, cursor: m.cursor }));
    return { messages, cursor: body.cursor ?? null };
  }

  /** Who is present in `channel`, on every node: `{channel, count, clients: [{id, user, info}]}`. */
  presence(channel) {
    return this._get('/v1/presence', { channel });
  }

  async _get(path, query) {
    const url = new URL(path, this.url);
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
    const headers = {};
    const token = await this._freshToken();
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(url, { headers, cache: 'no-store' });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new PgPushError(body.error ?? 'http', body.reason ?? response.statusText, response.status);
    }
    return body;
  }

  async _postPublish(channel, data, mode) {
    const url = new URL(`/v1/publish/${encodeURIComponent(channel)}`, this.url);
    url.searchParams.set('mode', mode);
    const headers = { 'content-type': 'application/json' };
    const token = await this._freshToken();
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(data) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new PgPushError(body.error ?? 'http', body.reason ?? response.statusText, response.status);
    }
    return body.cursor ? { cursor: body.cursor } : {};
  }

  _emit(event, detail) {
    for (const handler of this._handlers.get(event) ?? []) {
      try {
        handler(detail);
      } catch (error) {
        setTimeout(() => { throw error; });
      }
    }
  }

  // Settles the publish waiting for `ref`; false when none waits.
  _settle(ref, error, result) {
    const pending = this._pending.get(ref);
    if (!pending) return false;
    this._pending.delete(ref);
    clearTimeout(pending.timer);
    if (error) pending.reject(new PgPushError(error.code, error.reason));
    else pending.resolve(result);
    return true;
  }

  _drop(error) {
    const connection = this._connection;
    this._connection = null;
    this._attempt = null;
    this.transport = null;
    if (connection) connection.close();
    for (const ref of [...this._pending.keys()]) this._settle(ref, error);
  }

  // On a live WebSocket, sends a fresh token (`auth`) before the current one expires, so the
  // connection is not closed (4001). Other transports reconnect with a fresh token instead.
  _scheduleRefresh(attempt) {
    clearTimeout(this._refreshTimer);
    const expires = tokenExpiry(this._token);
    if (typeof this._tokenSource !== 'function' || !expires) return;
    const left = expires - Date.now();
    const delay = Math.max(0, left - Math.min(30000, left / 5));
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this._freshToken();
        if (this._attempt !== attempt || !this._connection) return;
        this._connection.send({ op: 'auth', token, ref: `auth-${this._nextRef++}` });
        this._scheduleRefresh(attempt);
      } catch (error) {
        this._emit('error', new PgPushError('token', `the token function failed: ${error}`));
      }
    }, delay);
  }

  // The token to send now: the string given, or what the token function gives.
  async _freshToken() {
    if (typeof this._tokenSource === 'function') this._token = await this._tokenSource();
    return this._token;
  }

  _open(skipped = 0) {
    if (typeof this._tokenSource !== 'function') {
      this._openWithToken(skipped);
      return;
    }
    this._freshToken().then(
      () => this.state !== 'closed' && this._openWithToken(skipped),
      (error) => {
        if (this.state === 'closed') return;
        this._emit('error', new PgPushError('token', `the token function failed: ${error}`));
        this._retryTimer = setTimeout(() => this.state !== 'closed' && this._open(skipped), this.maxBackoffMs);
      },
    );
  }

  _openWithToken(skipped) {
    if (this._refusedToken && this._token === this._refusedToken) {
      this.state = 'closed';
      this._emit('error', new PgPushError('disconnected', 'the server refused this token; give the client a new one'));
      return;
    }
    this._refusedToken = null;
    const name = this.transports[this._transportIndex];
    const open = OPENERS[name];
    if (!open.supported()) {
      this._nextTransport();
      if (skipped + 1 >= this.transports.length) {
        this.state = 'closed';
        this._emit('error', new PgPushError('unsupported', 'this browser has none of the transports'));
        return;
      }
      this._openWithToken(skipped + 1);
      return;
    }
    // Events of an attempt that is no longer the current one are ignored.
    const attempt = { name, ready: false, connection: null };
    this._attempt = attempt;
    const current = () => this._attempt === attempt;
    const connectTimer = setTimeout(() => {
      if (!attempt.ready && current()) this._lost(attempt, 0, 'connect timeout');
    }, this.connectTimeoutMs);
    attempt.connection = open(this, {
      ready: () => {
        if (attempt.ready || !current()) return;
        attempt.ready = true;
        clearTimeout(connectTimer);
        this.state = 'connected';
        this.transport = name;
        this._failures = 0;
        this._worked.add(name);
        this._emit('connected', { transport: name });
        if (name === 'websocket') this._scheduleRefresh(attempt);
      },
      message: (message) => {
        if (!current()) return;
        if (message.cursor) this.cursor = message.cursor;
        this._emit('message', message);
      },
      // A reset may carry the cursor the new history goes on from: later reconnects resume there.
      reset: (reason, cursor) => {
        if (!current()) return;
        if (cursor) this.cursor = cursor;
        this._emit('reset', { reason });
      },
      signal: (event, detail) => current() && this._emit(event, detail),
      error: (error) => current() && this._emit('error', error),
      closed: (code, reason) => {
        clearTimeout(connectTimer);
        if (current()) this._lost(attempt, code, reason);
      },
    });
    if (current()) this._connection = attempt.connection;
  }

  // The live connection ended (or never became live): tell, then retry after a jittered backoff,
  // moving on to the next transport when this one keeps failing before it connects.
  _lost(attempt, code, reason) {
    const { name, ready: wasReady } = attempt;
    this._attempt = null;
    // Disconnected or revoked: never again with this token (a token function may give another).
    if (REFUSED_TOKEN_CLOSES.has(code)) this._refusedToken = this._token;
    if (!this._connection) this._connection = attempt.connection;
    this._drop(new PgPushError('disconnected', 'the connection was lost'));
    if (this.state === 'closed') return;
    this.state = 'connecting';
    if (!wasReady) {
      this._failures += 1;
      const patience = this._worked.has(name) ? 4 : 2;
      if (this._failures % patience === 0) this._nextTransport();
    }
    const exponent = wasReady ? 0 : Math.min(this._failures, 10);
    const ceiling = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** exponent);
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    if (wasReady) this._emit('disconnected', { transport: name, code, reason, retryInMs: delay });
    this._retryTimer = setTimeout(() => {
      if (this.state === 'connecting') this._open();
    }, delay);
  }

  _nextTransport() {
    this._transportIndex = (this._transportIndex + 1) % this.transports.length;
  }

  // `path` on the server with the channels and, when set, `cursorParam=<cursor>` (else
  // `history=<n>`) and `presence=1`.
  _endpoint(path, cursorParam, extra = {}, presence = this._presence) {
    const url = new URL(path, this.url);
    for (const channel of this.channels) url.searchParams.append('channel', channel);
    if (this.cursor) url.searchParams.set(cursorParam, this.cursor);
    else if (this._history) url.searchParams.set('history', this._history);
    if (presence) url.searchParams.set('presence', '1');
    if (this.filter) url.searchParams.set('filter', JSON.stringify(this.filter));
    // Browsers cannot set headers on WebSocket or EventSource: the token goes in the query.
    if (this._token) url.searchParams.set('token', this._token);
    for (const [key, value] of Object.entries(extra)) url.searchParams.set(key, value);
    return url;
  }
}

// A JWT's `exp` in milliseconds, or null when it has none or is not a JWT.
function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, '='))).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

function openWebSocket(client, on) {
  const url = client._endpoint('/v1/ws', 'since');
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(url);
  const inUrl = new Set(client.channels);
  socket.onopen = () => {
    // Channels added or removed while the socket was opening.
    const added = [...client.channels].filter((c) => !inUrl.has(c));
    const removed = [...inUrl].filter((c) => !client.channels.has(c));
    if (added.length) subscribe(added);
    if (removed.length) send({ op: 'unsubscribe', channels: removed });
    if (client.channels.size === 0) on.ready();
  };
  socket.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      on.error(new PgPushError('bad_frame', 'the server sent a frame that is not JSON'));
      return;
    }
    switch (frame.type) {
      case 'message':
        on.message({ channel: frame.channel, data: frame.data, cursor: frame.cursor });
        break;
      // The filter left durable events out: the cursor moves past them.
      case 'cursor':
        client.cursor = frame.cursor;
        break;
      case 'subscribed':
        if (frame.cursor) client.cursor = frame.cursor;
        if (frame.presence_id) client.presenceId = frame.presence_id;
        on.ready();
        break;
      case 'join':
      case 'leave':
        on.signal(frame.type, { channel: frame.channel, client: frame.client });
        break;
      case 'unsubscribed':
        // The server unsubscribed this user (pgpush.unsubscribe): the channels are gone here too.
        if (frame.by === 'server') {
          frame.channels.forEach((c) => client.channels.delete(c));
          on.signal('unsubscribed', { channels: frame.channels });
        }
        break;
      case 'reset':
        on.reset(frame.reason, frame.cursor);
        break;
      case 'ack':
        client._settle(frame.ref, null, frame.cursor ? { cursor: frame.cursor } : {});
        break;
      case 'error':
        if (frame.ref == null || !client._settle(frame.ref, frame)) {
          on.error(new PgPushError(frame.code, frame.reason));
        }
        break;
      default:
        break;
    }
  };
  socket.onclose = (event) => on.closed(event.code, event.reason);
  const send = (frame) => socket.readyState === WebSocket.OPEN && socket.send(JSON.stringify(frame));
  const subscribe = (channels) => {
    const frame = { op: 'subscribe', channels };
    if (client._history) frame.history = client._history;
    if (client._presence) frame.presence = true;
    if (client.filter) frame.filter = client.filter;
    send(frame);
  };
  return {
    name: 'websocket',
    send,
    subscribe,
    // A subscribe on subscribed channels replaces their filter, without a replay.
    refilter: () => subscribe([...client.channels]),
    unsubscribe: (channels) => send({ op: 'unsubscribe', channels }),
    close: () => {
      socket.onclose = null;
      socket.close(1000);
    },
  };
}
openWebSocket.supported = () => typeof globalThis.WebSocket === 'function';

function openEventSource(client, on) {
  // An EventSource serves a fixed channel list: changing it means a new stream (resuming after
  // the cursor), and it needs at least one channel.
  let source = null;
  let lastId = '';
  const start = () => {
    source?.close();
    if (client.channels.size === 0) {
      on.ready();
      return;
    }
    source = new EventSource(client._endpoint('/v1/sse', 'since'));
    lastId = '';
    source.addEventListener('subscribed', (event) => {
      const frame = JSON.parse(event.data);
      if (frame.cursor) client.cursor = frame.cursor;
      if (frame.presence_id) client.presenceId = frame.presence_id;
      on.ready();
    });
    for (const type of ['join', 'leave']) {
      source.addEventListener(type, (event) => {
        const frame = JSON.parse(event.data);
        on.signal(type, { channel: frame.channel, client: frame.client });
      });
    }
    source.addEventListener('unsubscribed', (event) => {
      const frame = JSON.parse(event.data);
      frame.channels.forEach((c) => client.channels.delete(c));
      on.signal('unsubscribed', { channels: frame.channels });
    });
    source.addEventListener('message', (event) => {
      const frame = JSON.parse(event.data);
      // lastEventId stays set on events without an id: only a new id is a new cursor.
      const cursor = event.lastEventId && event.lastEventId !== lastId ? event.lastEventId : undefined;
      if (cursor) lastId = cursor;
      on.message({ channel: frame.channel, data: frame.data, cursor });
    });
    source.addEventListener('cursor', (event) => {
      lastId = event.lastEventId;
      client.cursor = JSON.parse(event.data).cursor;
    });
    source.addEventListener('reset', (event) => {
      const frame = JSON.parse(event.data);
      if (frame.cursor) lastId = frame.cursor;
      on.reset(frame.reason, frame.cursor);
    });
    source.addEventListener('error', (event) => {
      if (event.data) {
        const frame = JSON.parse(event.data);
        on.error(new PgPushError(frame.code, frame.reason));
        // Disconnected by the server: end as a WebSocket would (4002), not as a lost stream.
        if (frame.code === 'disconnected') {
          source.close();
          on.closed(4002, frame.reason);
        }
        return;
      }
      // We reconnect ourselves, with our cursor and backoff, not the browser's.
      source.close();
      on.closed(0, 'the event stream ended');
    });
  };
  start();
  return {
    name: 'sse',
    send: () => false,
    subscribe: start,
    refilter: start,
    unsubscribe: start,
    close: () => source?.close(),
  };
}
openEventSource.supported = () => typeof globalThis.EventSource === 'function';

function openPoll(client, on) {
  let stopped = false;
  let controller = null;
  let restart = false;
  const loop = async () => {
    let ready = false;
    while (!stopped) {
      if (client.channels.size === 0) {
        if (!ready) {
          ready = true;
          on.ready();
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      // The first poll answers at once (the current cursor, or what was missed); later ones wait.
      // A poll cannot be present (it is no lasting connection): presence goes unasked.
      const url = client._endpoint('/v1/poll', 'cursor', { wait: ready ? client.pollWaitSeconds : 0 }, false);
      controller = new AbortController();
      let response;
      let body;
      try {
        response = await fetch(url, { signal: controller.signal, cache: 'no-store' });
        body = await response.json();
      } catch (error) {
        if (restart) {
          restart = false;
          continue;
        }
        if (!stopped) on.closed(0, 'poll failed');
        return;
      }
      if (stopped) return;
      if (!response.ok) {
        on.error(new PgPushError(body.error ?? 'http', body.reason ?? response.statusText, response.status));
        on.closed(response.status, body.reason ?? 'poll refused');
        return;
      }
      if (body.reset) on.reset(body.reason ?? 'cursor expired', body.cursor);
      for (const message of body.messages) {
        on.message({ channel: message.channel, data: message.data, cursor: message.cursor });
      }
      if (body.cursor) client.cursor = body.cursor;
      if (!ready) {
        ready = true;
        on.ready();
      }
    }
  };
  const again = () => {
    restart = true;
    controller?.abort();
  };
  loop();
  return {
    name: 'poll',
    send: () => false,
    subscribe: again,
    refilter: again,
    unsubscribe: again,
    close: () => {
      stopped = true;
      controller?.abort();
    },
  };
}
openPoll.supported = () => typeof globalThis.fetch === 'function';

const OPENERS = { websocket: openWebSocket, sse: openEventSource, poll: openPoll };

// gale.js: the browser (and Node) client of the gale WebSocket pub/sub broker.
//
// A plain ES module with no dependencies and no build step. The broker serves this
// very file at /gale.js; clients/js/ packages a copy of it for npm.
//
//   import { connect } from '/gale.js';
//   const c = connect('ws://127.0.0.1:8080/ws', { token, encoding: 'json' });
//   const off = await c.subscribe('chat.>', (data, topic) => console.log(topic, data));
//   const ack = await c.publish('chat.lobby', { text: 'hi' }); // { ep, off, dup, mid } on a history topic
//   await off();
//   c.close();
//
// History and recovery (topics the broker keeps history for, `--history PATTERN=SIZE`):
//
//   // Resume after reconnects, and from a position saved earlier (e.g. in localStorage):
//   const show = (data, topic, pos) => { render(data); localStorage.setItem('pos', JSON.stringify(pos)); };
//   await c.subscribe('chat.lobby', show, { // pos: { ep, off }, {} on topics without history
//     since: JSON.parse(localStorage.getItem('pos') || 'null') ?? undefined,
//     onRecover({ recovered, ep, off }) { if (!recovered) reloadEverything(); },
//   });
//   c.position('chat.lobby'); // { ep, off } of the last message received, or null
//   const { ep, off, messages } = await c.history('chat.lobby', { limit: 50 }); // [{ off, data }]
//
// - The client keeps the stream position ({ep, off}) of every subscribed concrete topic,
//   from each msg carrying one and from the sub's ack. After a reconnect it subscribes
//   again with `since`: the broker replays what was missed, then the subscription's
//   onRecover (and the client's 'recover' event) says whether that worked. recovered:
//   false (another epoch, messages gone, a pattern, a topic without history) means
//   messages were missed for good: reload the state. A msg whose off is not above the
//   last one seen of the same epoch is dropped as a duplicate.
// - Every publish carries a `mid` (a random per-client prefix and a counter, or the
//   caller's). A publish whose ack was lost with the connection is sent again, with the
//   same mid, after the reconnect instead of failing: the broker delivers it once and
//   answers dup: true. Likewise an unanswered history() is asked again.
//
// Protocol: gale v1 with its additions (one JSON object per text frame, or one
// MessagePack map per binary frame). See docs/PROTOCOL.md and docs/PROTOCOL-NOTES.md in
// the gale repository.

export const VERSION = '0.2.0';

const SUBPROTOCOLS = { json: 'gale.v1.json', msgpack: 'gale.v1.msgpack' };
const MSGPACK_MODULE = '@msgpack/msgpack';

const DEFAULTS = {
  encoding: 'json',
  timeout: 10000, // ms: a request (sub, unsub, pub, hist, ping) unanswered this long rejects
  minDelay: 250, // ms: first reconnect delay (before jitter)
  maxDelay: 15000, // ms: cap of the exponential backoff
  jitter: 0.5, // each delay is scaled by a random factor in [1 - jitter, 1]
  maxQueue: 1000, // publishes (and history calls) held while not connected; more: 'queue_full'
  heartbeat: 25000, // ms of silence after which a ping checks the connection; 0: off
  idempotent: true, // publishes carry a generated mid (and are re-sent after a lost ack)
};

/** An error from the broker (`code` is its error code) or from the client itself
 * (`timeout`, `closed`, `disconnected`, `queue_full`, `too_large`, `codec`). */
export class GaleError extends Error {
  constructor(code, message, request) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'GaleError';
    this.code = code;
    if (request !== undefined) this.request = request;
  }
}

/** Whether a concrete topic matches a pattern: `*` is one segment, a final `>` one or
 * more. */
export function matchPattern(pattern, topic) {
  if (pattern === topic) return true;
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>' && i === p.length - 1) return t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== '*' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** The delay before reconnect attempt `attempt` (0-based): exponential, capped, with
 * jitter. `random` is a function returning [0, 1). */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const min = opts.minDelay ?? DEFAULTS.minDelay;
  const max = opts.maxDelay ?? DEFAULTS.maxDelay;
  const jitter = Math.min(Math.max(opts.jitter ?? DEFAULTS.jitter, 0), 1);
  const base = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter * random()));
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) throw new TypeError('gale: connect() needs a URL outside a browser');
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
}

function resolveUrl(url, token) {
  const base = globalThis.location && globalThis.location.href;
  const u = new URL(url || defaultUrl(), base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.pathname === '/' && !url?.endsWith('/')) u.pathname = '/ws';
  if (token) u.searchParams.set('token', token);
  return u.toString();
}

function rethrow(e) {
  setTimeout(() => {
    throw e;
  });
}

function base64ToBytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Whether a pattern names one concrete topic (no `*` or `>` segment). */
function isConcrete(pattern) {
  return !pattern.split('.').some((s) => s === '*' || s === '>');
}

function isPosition(p) {
  return (
    p !== null && typeof p === 'object' && typeof p.ep === 'string' && Number.isSafeInteger(p.off) && p.off >= 0
  );
}

/** 16 random characters (96 bits) that start this client's mids. */
function midPrefix() {
  const bytes = new Uint8Array(12);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_');
}

/** A history item or msg's data: `bin` (base64, binary data to a JSON client) as bytes. */
function dataOf(m) {
  if (m.data === undefined && typeof m.bin === 'string') return base64ToBytes(m.bin);
  return m.data;
}

async function loadCodec(opts) {
  if (opts.codec) return opts.codec;
  try {
    // A variable specifier, so that bundlers leave it alone and the module loads even
    // where @msgpack/msgpack is not installed (as long as msgpack is not asked for).
    const m = await import(/* webpackIgnore: true */ /* @vite-ignore */ MSGPACK_MODULE);
    return { encode: m.encode, decode: m.decode };
  } catch (e) {
    throw new GaleError(
      'codec',
      `encoding 'msgpack' needs the ${MSGPACK_MODULE} package or a codec option (${e.message})`,
    );
  }
}

/** Opens a connection to a gale broker. It connects in the background and keeps
 * reconnecting until close(). */
export function connect(url, options = {}) {
  return new GaleClient(url, options);
}

export class GaleClient {
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const enc = this.options.encoding;
    if (!SUBPROTOCOLS[enc]) throw new TypeError(`gale: unknown encoding '${enc}'`);
    this.encoding = enc;
    this.url = resolveUrl(url, this.options.token);
    this.state = 'connecting'; // 'connecting' | 'open' | 'closed'
    this.hello = null; // the broker's hello: { v, node, conn, max_msg }
    this._WS = this.options.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError('gale: no WebSocket implementation (pass options.WebSocket)');
    this._listeners = new Map();
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> { resolve, reject, timer, req (as sent), item }
    this._queue = []; // requests (publishes, history calls) waiting for a connection
    // pattern -> { handlers: Set<{handler, onRecover}>, live, waiters: [], concrete,
    //   pos: {ep, off} | null (concrete topics with history), wasLive, seen }
    this._subs = new Map();
    this._midPrefix = midPrefix();
    this._midCount = 0;
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._connectTimer = null;
    this._lastRx = 0;
    this._codec = null;
    this._ready = enc === 'msgpack' ? loadCodec(this.options) : Promise.resolve(null);
    this._ready.then(
      (codec) => {
        this._codec = codec;
        if (this.state !== 'closed') this._open();
      },
      (err) => {
        this._emit('error', err);
        this._shutdown(err);
      },
    );
    queueMicrotask(() => this._emit('connecting', { attempt: 0, delay: 0 }));
  }

  // ---- events ----------------------------------------------------------------------

  /** Listens to an event: 'connecting' ({attempt, delay}), 'open' (hello),
   * 'disconnect' ({code, reason}), 'closed' ({code, reason}), 'state' (state, detail),
   * 'recover' ({topic, recovered, ep, off}: a subscription is back after a reconnect, or
   * was made with `since`; see subscribe), 'error' (Error). Returns a function that
   * removes the listener. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    if (event === 'connecting' || event === 'open' || event === 'closed') {
      this._emit('state', event, ...args);
    }
    const set = this._listeners.get(event);
    if (!set || set.size === 0) {
      // An exception thrown by the application's own code must not vanish: with no
      // 'error' listener, report it as an uncaught error.
      if (event === 'error' && !(args[0] instanceof GaleError)) rethrow(args[0]);
      return;
    }
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        if (event !== 'error') this._emit('error', e);
        else rethrow(e);
      }
    }
  }

  /** Whether requests can go out now: connected and greeted (resubscribing counts). */
  _canSend() {
    return this._ws !== null && this.hello !== null;
  }

  _setState(state, detail) {
    this.state = state;
    this._emit(state, detail);
  }

  // ---- public API ------------------------------------------------------------------

  /** Subscribes to a pattern. Resolves on the broker's ack with a function that removes
   * this handler (and unsubscribes the pattern when it was the last one); rejects with a
   * GaleError ('bad_topic', 'limit', 'timeout', 'closed', ...).
   *
   * handler(data, topic, {ep, off}): ep/off are the message's stream position (absent on
   * topics without history).
   *
   * options.since ({ep, off}, concrete topics only): the position of the last message the
   * application has (off 0: none of epoch ep), e.g. restored from storage; the broker
   * replays what came after it before the ack. It counts when this call creates the
   * subscription; a topic already subscribed keeps its own position.
   * options.onRecover({topic, recovered, ep, off}): called after the ack of a
   * subscription made with `since`, and each time the subscription is made again after
   * a reconnect (after the replayed messages, before the promise resolves). recovered
   * true: nothing was missed. false: messages were missed for good (another epoch,
   * expired, a pattern, a topic without history): reload the state. ep/off: the
   * position the broker reported (absent without history). */
  subscribe(pattern, handler, options = {}) {
    if (typeof pattern !== 'string') return Promise.reject(new TypeError('gale: pattern must be a string'));
    if (typeof handler !== 'function') return Promise.reject(new TypeError('gale: handler must be a function'));
    const { since, onRecover } = options ?? {};
    if (onRecover !== undefined && typeof onRecover !== 'function') {
      return Promise.reject(new TypeError('gale: onRecover must be a function'));
    }
    if (since !== undefined && since !== null) {
      if (!isPosition(since)) {
        return Promise.reject(new TypeError('gale: since must be { ep: string, off: integer >= 0 }'));
      }
      if (!isConcrete(pattern)) return Promise.reject(new TypeError('gale: since needs a concrete topic'));
    }
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    let sub = this._subs.get(pattern);
    const fresh = !sub;
    if (fresh) {
      sub = { handlers: new Set(), live: false, waiters: [], concrete: isConcrete(pattern), pos: null };
      sub.wasLive = false; // live on an earlier connection: the next sub is a recovery
      sub.seen = false; // pos moved by a msg since the last sub went out
      if (since) sub.pos = { ep: since.ep, off: since.off };
      this._subs.set(pattern, sub);
    }
    const entry = { handler, onRecover };
    sub.handlers.add(entry);
    const unsubscribe = () => this._unsubscribe(pattern, entry);
    if (sub.live) return Promise.resolve(unsubscribe);
    return new Promise((resolve, reject) => {
      const waiter = { resolve: () => resolve(unsubscribe), reject, entry };
      waiter.timer = setTimeout(() => {
        this._dropWaiter(pattern, waiter);
        reject(new GaleError('timeout', `no ack for sub ${pattern}`));
      }, this.options.timeout);
      sub.waiters.push(waiter);
      if (fresh && this._canSend()) this._sendSub(pattern);
    });
  }

  /** Publishes data (any JSON value; with msgpack anything the codec encodes) to a
   * concrete topic. Resolves on the broker's ack: {op: 'ack', id, mid, and on a topic
   * with history ep, off; dup: true when the broker had the mid already}; rejects with a
   * GaleError. While the client is reconnecting, publishes wait in a bounded queue.
   *
   * options.mid: the publish's idempotency key (1 to 64 bytes of UTF-8); by default one
   * is generated (unless the client option idempotent is false). A publish with a mid
   * whose ack the connection took with it is sent again after the reconnect, with the
   * same mid, rather than rejected. */
  publish(topic, data, options = {}) {
    if (typeof topic !== 'string') return Promise.reject(new TypeError('gale: topic must be a string'));
    let mid = options?.mid;
    if (mid !== undefined) {
      const n = typeof mid === 'string' ? utf8Length(mid) : 0;
      if (n < 1 || n > 64) return Promise.reject(new TypeError('gale: mid must be a string of 1 to 64 bytes'));
    } else if (this.options.idempotent !== false) {
      mid = `${this._midPrefix}.${(this._midCount++).toString(36)}`;
    }
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    if (data === undefined) data = null;
    const req = { op: 'pub', topic, data };
    if (mid !== undefined) req.mid = mid;
    return this._enqueue(req, mid !== undefined).then((ack) => (mid !== undefined ? { ...ack, mid } : ack));
  }

  /** The messages the broker holds for a concrete topic with history, oldest first.
   * Resolves with {ep, off, messages: [{off, data}]}: off is the stream's current top;
   * binary data comes as a Uint8Array, as in a handler. A topic without history: ep
   * undefined, off 0, no messages. options.limit: at most that many (the broker's
   * default 100; it caps it). Waits for the connection like a publish; asked again after
   * a reconnect when the connection is lost before the answer. */
  history(topic, options = {}) {
    if (typeof topic !== 'string') return Promise.reject(new TypeError('gale: topic must be a string'));
    const limit = options?.limit;
    if (limit !== undefined && !(Number.isSafeInteger(limit) && limit >= 0)) {
      return Promise.reject(new TypeError('gale: limit must be an integer >= 0'));
    }
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    const req = { op: 'hist', topic };
    if (limit !== undefined) req.limit = limit;
    return this._enqueue(req, true).then((m) => ({
      ep: typeof m.ep === 'string' ? m.ep : undefined,
      off: Number.isSafeInteger(m.off) ? m.off : 0,
      messages: (Array.isArray(m.msgs) ? m.msgs : []).map((x) => ({ off: x.off, data: dataOf(x) })),
    }));
  }

  /** The stream position {ep, off} of the last message received on a subscribed concrete
   * topic (or the one its ack reported, or the `since` given), or null: not subscribed
   * as such, or no history. Save it to resume later with subscribe(..., { since }). */
  position(topic) {
    const pos = this._subs.get(topic)?.pos;
    return pos ? { ep: pos.ep, off: pos.off } : null;
  }

  /** Round trip to the broker; resolves with the time taken in ms. */
  ping() {
    if (this.state !== 'open') return Promise.reject(new GaleError('disconnected', 'not connected'));
    const t0 = Date.now();
    return new Promise((resolve, reject) => {
      this._request({ req: { op: 'ping' }, resolve: () => resolve(Date.now() - t0), reject });
    });
  }

  /** Patterns currently subscribed (or being subscribed). */
  patterns() {
    return [...this._subs.keys()];
  }

  /** Closes the connection for good: no more reconnects; whatever is pending or queued
   * rejects with 'closed'. Resolves once the socket is closed. */
  close() {
    if (this.state === 'closed') return Promise.resolve();
    const ws = this._ws;
    const done = new Promise((resolve) => {
      if (!ws || ws.readyState !== 1) {
        resolve(); // not open: nothing to wait for
        return;
      }
      const t = setTimeout(resolve, 2000); // the closing handshake is best effort
      ws.addEventListener('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
    this._shutdown(new GaleError('closed', 'the client is closed'), 1000, 'client closed');
    return done;
  }

  // ---- internals -------------------------------------------------------------------

  _shutdown(err, code = 1000, reason = '') {
    clearTimeout(this._retryTimer);
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._connectTimer);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    this._failPending(err);
    for (const item of this._queue.splice(0)) {
      clearTimeout(item.timer);
      item.reject(err);
    }
    for (const sub of this._subs.values()) {
      for (const w of sub.waiters) {
        clearTimeout(w.timer);
        w.reject(err);
      }
    }
    this._subs.clear();
    this._setState('closed', { code, reason });
  }

  _open() {
    let ws;
    try {
      ws = new this._WS(this.url, SUBPROTOCOLS[this.encoding]);
    } catch (e) {
      this._emit('error', e);
      this._scheduleReconnect({ code: 1006, reason: e.message });
      return;
    }
    if (this.encoding === 'msgpack') ws.binaryType = 'arraybuffer';
    this._ws = ws;
    this._onMessage = (ev) => this._receive(ev.data);
    this._onClose = (ev) => this._lost(ws, { code: ev.code, reason: ev.reason });
    // Browsers follow an error with a close event; some WebSocket implementations (Node
    // 20's) do not when the connection cannot be made, so an error counts as a loss.
    this._onError = () => setTimeout(() => this._abort(ws, 'connection error'), 0);
    // A connection not greeted in time (a black-holed address, a stalled proxy) is
    // given up as well.
    clearTimeout(this._connectTimer);
    this._connectTimer = setTimeout(() => {
      if (!this.hello) this._abort(ws, 'connect timeout');
    }, this.options.timeout);
    ws.addEventListener('message', this._onMessage);
    ws.addEventListener('close', this._onClose);
    ws.addEventListener('error', this._onError);
  }

  /** Drops ws (if it is still the current socket) as lost with 1006. */
  _abort(ws, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    try {
      ws.close(4000, reason);
    } catch {
      /* not open yet, or closing already */
    }
    this._lost(ws, { code: 1006, reason });
  }

  _detach(ws) {
    ws.removeEventListener('message', this._onMessage);
    ws.removeEventListener('close', this._onClose);
    ws.removeEventListener('error', this._onError);
  }

  _lost(ws, info) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._connectTimer);
    const wasOpen = this.state === 'open';
    // Publishes with a mid and history calls go out again after the reconnect: the mid
    // makes a second delivery impossible, a history call reads only.
    this._failPending(new GaleError('disconnected', `connection lost (${info.code})`), true);
    for (const sub of this._subs.values()) {
      if (sub.live) sub.wasLive = true;
      sub.live = false;
    }
    if (wasOpen || this.hello) this._emit('disconnect', info);
    if (info.code === 1008) {
      // Policy: the token is invalid or expired, or the origin is not allowed.
      // Retrying with the same credentials cannot help.
      this._shutdown(new GaleError('forbidden', info.reason || 'refused by the broker (1008)'), 1008, info.reason);
      return;
    }
    this._scheduleReconnect(info);
  }

  _scheduleReconnect(info) {
    const delay = backoffDelay(this._attempt, this.options);
    this._attempt++;
    this.hello = null;
    this._setState('connecting', { attempt: this._attempt, delay, code: info.code, reason: info.reason });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  /** Rejects every request waiting for an answer with err; with requeue, those that may
   * be sent again (item.retry) wait for the next connection instead, ahead of the queue. */
  _failPending(err, requeue = false) {
    const again = [];
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      this._pending.delete(id);
      if (requeue && p.item?.retry) again.push(p.item);
      else p.reject(err);
    }
    for (const item of again) this._hold(item);
    if (again.length) this._queue.unshift(...this._queue.splice(-again.length));
  }

  /** Sends a request now when open, else queues it (bounded) until the connection is. */
  _enqueue(req, retry) {
    return new Promise((resolve, reject) => {
      const item = { req, resolve, reject, retry };
      if (this.state === 'open') {
        this._request(item);
        return;
      }
      if (this._queue.length >= this.options.maxQueue) {
        reject(new GaleError('queue_full', `${this._queue.length} requests already wait for a connection`));
        return;
      }
      this._hold(item);
    });
  }

  /** Puts item at the end of the queue. The timeout covers the time in the queue too:
   * every promise settles in time. */
  _hold(item) {
    clearTimeout(item.timer);
    item.timer = setTimeout(() => {
      const i = this._queue.indexOf(item);
      if (i >= 0) this._queue.splice(i, 1);
      item.reject(new GaleError('timeout', `not connected within ${this.options.timeout} ms`, item.req));
    }, this.options.timeout);
    this._queue.push(item);
  }

  _encode(msg) {
    return this.encoding === 'json' ? JSON.stringify(msg) : this._codec.encode(msg);
  }

  _send(msg) {
    const frame = this._encode(msg);
    const size = typeof frame === 'string' ? utf8Length(frame) : frame.byteLength;
    const max = this.hello?.max_msg;
    if (max && size > max) {
      // The broker would close the connection (1009): refuse it here instead.
      throw new GaleError('too_large', `${size} bytes, the broker takes at most ${max}`);
    }
    // Between the broker's close frame and the 'close' event the socket is CLOSING: a send
    // would be dropped (and the browser logs an error); the request fails as disconnected.
    if (this._ws.readyState !== 1) throw new GaleError('disconnected', 'the connection is closing');
    this._ws.send(frame);
  }

  /** Sends a request with an id and settles item on its reply. */
  _request(item) {
    const id = this._nextId++;
    const req = { ...item.req, id };
    clearTimeout(item.timer);
    try {
      this._send(req);
    } catch (e) {
      if (item.retry && e.code === 'disconnected' && this.state !== 'closed') {
        this._hold(item); // the socket is closing: after the reconnect, then
        return;
      }
      item.reject(e instanceof GaleError ? e : new GaleError('bad_request', e.message));
      return;
    }
    const timer = setTimeout(() => {
      this._pending.delete(id);
      item.reject(new GaleError('timeout', `no answer to ${req.op} within ${this.options.timeout} ms`, req));
    }, this.options.timeout);
    this._pending.set(id, { resolve: item.resolve, reject: item.reject, item, req, timer });
  }

  /** Sends the sub of a pattern: with `since` when its position is known. Settles the
   * waiting subscribe calls on the answer and reports a recovery. */
  _sendSub(pattern) {
    const sub = this._subs.get(pattern);
    const req = { op: 'sub', topic: pattern };
    if (sub.concrete && sub.pos) req.since = { ep: sub.pos.ep, off: sub.pos.off };
    const report = req.since !== undefined || sub.wasLive;
    sub.seen = false;
    return new Promise((resolve) => {
      this._request({
        req,
        resolve: (ack) => {
          if (this._subs.get(pattern) === sub) {
            if (sub.concrete) this._ackPosition(sub, ack);
            sub.live = true;
            if (report) this._recovered(pattern, sub, ack);
            for (const w of sub.waiters.splice(0)) {
              clearTimeout(w.timer);
              w.resolve();
            }
          }
          resolve();
        },
        reject: (err) => {
          if (this._subs.get(pattern) === sub && err.code !== 'disconnected') {
            // The broker refused the pattern: nobody gets it.
            this._subs.delete(pattern);
            for (const w of sub.waiters.splice(0)) {
              clearTimeout(w.timer);
              w.reject(err);
            }
            if (sub.handlers.size > sub.waiters.length) this._emit('error', err);
          }
          resolve();
        },
      });
    });
  }

  /** The position a sub's ack reports: the one to resume from, unless the messages
   * received meanwhile are further on. */
  _ackPosition(sub, ack) {
    if (typeof ack.ep !== 'string' || !Number.isSafeInteger(ack.off)) {
      sub.pos = null; // a topic without history (or a broker without it)
      return;
    }
    const pos = sub.pos;
    const ahead = pos && pos.ep === ack.ep && pos.off > ack.off;
    // recovered false resets the position (the one sent may be past the broker's top),
    // except to go back behind messages of this epoch delivered since the sub went out.
    if (!ahead || (ack.recovered === false && !sub.seen)) sub.pos = { ep: ack.ep, off: ack.off };
  }

  _recovered(pattern, sub, ack) {
    const info = { topic: pattern, recovered: ack.recovered === true };
    if (typeof ack.ep === 'string') info.ep = ack.ep;
    if (Number.isSafeInteger(ack.off) && typeof ack.ep === 'string') info.off = ack.off;
    for (const { onRecover } of [...sub.handlers]) {
      if (!onRecover) continue;
      try {
        onRecover({ ...info });
      } catch (e) {
        this._emit('error', e);
      }
    }
    this._emit('recover', { ...info });
  }

  _dropWaiter(pattern, waiter) {
    const sub = this._subs.get(pattern);
    if (!sub) return;
    sub.waiters = sub.waiters.filter((w) => w !== waiter);
    sub.handlers.delete(waiter.entry);
    if (sub.handlers.size === 0) {
      this._subs.delete(pattern);
      if (this._canSend()) this._request({ req: { op: 'unsub', topic: pattern }, resolve() {}, reject() {} });
    }
  }

  _unsubscribe(pattern, entry) {
    const sub = this._subs.get(pattern);
    if (!sub || !sub.handlers.delete(entry)) return Promise.resolve();
    if (sub.handlers.size > 0) return Promise.resolve();
    this._subs.delete(pattern);
    if (!this._canSend()) return Promise.resolve(); // nothing held on the broker
    return new Promise((resolve, reject) => {
      this._request({
        req: { op: 'unsub', topic: pattern },
        resolve: () => resolve(),
        // A lost connection drops its subscriptions anyway.
        reject: (err) => (err.code === 'disconnected' ? resolve() : reject(err)),
      });
    });
  }

  _decode(raw) {
    if (this.encoding === 'json') {
      if (typeof raw !== 'string') throw new Error('binary frame on a JSON connection');
      return JSON.parse(raw);
    }
    return this._codec.decode(raw instanceof ArrayBuffer ? new Uint8Array(raw) : raw);
  }

  _receive(raw) {
    let m;
    try {
      m = this._decode(raw);
    } catch (e) {
      this._emit('error', new GaleError('bad_request', `undecodable frame from the broker: ${e.message}`));
      return;
    }
    if (!m || typeof m !== 'object') return;
    this._lastRx = Date.now();
    switch (m.op) {
      case 'msg':
        this._deliver(m);
        break;
      case 'ack':
      case 'hist':
      case 'pong': {
        const p = this._pending.get(m.id);
        if (p) {
          this._pending.delete(m.id);
          clearTimeout(p.timer);
          p.resolve(m);
        }
        break;
      }
      case 'err': {
        const err = new GaleError(m.code || 'internal', m.msg);
        const p = m.id !== undefined ? this._pending.get(m.id) : undefined;
        if (p) {
          this._pending.delete(m.id);
          clearTimeout(p.timer);
          err.request = p.req;
          p.reject(err);
        } else {
          this._emit('error', err);
        }
        break;
      }
      case 'hello':
        clearTimeout(this._connectTimer);
        this.hello = m;
        this._greeted(m);
        break;
      default:
        break; // unknown ops are ignored, as the protocol says
    }
  }

  /** After hello: resubscribe every pattern, then report open, then flush the queue. */
  async _greeted(hello) {
    const ws = this._ws;
    const subs = [...this._subs.keys()].map((p) => this._sendSub(p));
    await Promise.all(subs);
    if (ws !== this._ws || !ws) return; // lost again meanwhile
    this._attempt = 0;
    this._setState('open', hello);
    this._armHeartbeat();
    for (const item of this._queue.splice(0)) {
      if (this.state !== 'open') {
        this._queue.push(item);
        continue;
      }
      this._request(item);
    }
  }

  _armHeartbeat() {
    const every = this.options.heartbeat;
    if (!every) return;
    clearTimeout(this._heartbeatTimer);
    this._heartbeatTimer = setTimeout(() => {
      if (this.state !== 'open') return;
      if (Date.now() - this._lastRx < every) {
        this._armHeartbeat();
        return;
      }
      const ws = this._ws;
      this.ping().then(
        () => this._armHeartbeat(),
        (err) => {
          // Silent for heartbeat + timeout ms: the connection is dead, start over.
          if (err.code === 'timeout') this._abort(ws, 'heartbeat timeout');
        },
      );
    }, every);
  }

  _deliver(m) {
    const data = dataOf(m);
    const info = {};
    if (typeof m.ep === 'string' && Number.isSafeInteger(m.off)) {
      info.ep = m.ep;
      info.off = m.off;
      // The position of a subscribed concrete topic moves on; a message not past it (same
      // epoch) is one the client has already had: dropped.
      const exact = this._subs.get(m.topic);
      if (exact) {
        const pos = exact.pos;
        if (pos && pos.ep === m.ep && m.off <= pos.off) return;
        exact.pos = { ep: m.ep, off: m.off };
        exact.seen = true;
      }
    }
    for (const [pattern, sub] of this._subs) {
      if (!matchPattern(pattern, m.topic)) continue;
      for (const { handler } of sub.handlers) {
        try {
          handler(data, m.topic, { ...info });
        } catch (e) {
          this._emit('error', e);
        }
      }
    }
  }
}

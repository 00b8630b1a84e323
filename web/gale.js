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
// Presence (topics the broker tracks members of, `--presence PATTERN`):
//
//   const { count, members } = await c.presence('chat.lobby'); // [{ conn, user?, info? }]
//   await c.subscribe('chat.lobby', show, {
//     presence: true, // join/leave events; the client keeps the member list
//     info: { nick: 'ann' }, // on a broker without tokens: this member's info
//     onPresence({ count, members, exact }) { render(members, count); },
//     onJoin(member) { say(`${member.info?.nick} joined`); },
//     onLeave(member) { say(`${member.info?.nick} left`); },
//   });
//   c.members('chat.lobby'); // { topic, count, members, exact }, or null
//   c.conn; // this connection's id, as members list it (a string), or null
//
// - A subscription with presence reads the member list (presence()) once the sub is
//   acked, before subscribe() resolves, and applies each join and leave to it (by conn:
//   a join of a conn listed is ignored, a leave of one not listed too). After a reconnect
//   the broker has forgotten the old connection: the client subscribes again with the
//   same presence and info, reads the list again, and reports the differences through
//   onJoin/onLeave. A count-only presence message (a topic past the broker's
//   --presence-events-max: no more join/leave) sets count and exact: false, and the list
//   is read again once such messages stop for presenceDelay ms (at the latest 10 x that).
//
// Tokens that expire (a broker with --jwt-secret or --jwt-keys), refreshed on the live
// connection before they do:
//
//   const c = connect(url, { getToken: async () => (await fetch('/api/gale-token')).text() });
//   c.on('error', (e) => console.warn(e)); // a refused refresh, a subscription dropped
//
// - getToken() gives the token of each new connection (the handshake) and the new tokens
//   sent with `refresh` while connected: before the current token's `exp` (read from the
//   JWT's payload, not verified), at 80% of its lifetime or 30 s before exp, whichever
//   comes first, but not sooner than min(5 s, half the time left). A refused refresh is
//   tried again with backoff until the token expires; the broker then closes with 1008 and
//   the client reconnects with a new token (with getToken, 1008 is not final).
// - refreshToken(token?) sends one now (the given token, else getToken()'s).
// - A refresh whose token no longer allows a subscription makes the broker drop it: the
//   client forgets the pattern and reports a GaleError 'forbidden' with `topic` set.
//
// Protocol: gale v1 with its additions (one JSON object per text frame, or one
// MessagePack map per binary frame). See docs/PROTOCOL.md and docs/PROTOCOL-NOTES.md in
// the gale repository.

export const VERSION = '0.5.0';

const SUBPROTOCOLS = { json: 'gale.v1.json', msgpack: 'gale.v1.msgpack' };
const MSGPACK_MODULE = '@msgpack/msgpack';

const DEFAULTS = {
  encoding: 'json',
  timeout: 10000, // ms: a request (sub, unsub, pub, hist, presence, ping) unanswered this long rejects
  minDelay: 250, // ms: first reconnect delay (before jitter)
  maxDelay: 15000, // ms: cap of the exponential backoff
  jitter: 0.5, // each delay is scaled by a random factor in [1 - jitter, 1]
  maxQueue: 1000, // publishes (and history calls) held while not connected; more: 'queue_full'
  heartbeat: 25000, // ms of silence after which a ping checks the connection; 0: off
  idempotent: true, // publishes carry a generated mid (and are re-sent after a lost ack)
  presenceDelay: 2000, // ms without count-only presence messages before the list is read again
};

/** An error from the broker (`code` is its error code) or from the client itself
 * (`timeout`, `closed`, `disconnected`, `queue_full`, `too_large`, `codec`, `token`). */
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

/** The claims of a JWT (its payload, decoded but not verified), or null. */
function jwtClaims(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

const MAX_TIMER = 2 ** 31 - 1; // ms: setTimeout's longest delay

/** When a token should be refreshed: ms from `now`, or null for a token without `exp` (a
 * JWT whose payload has no numeric exp, or not a JWT). At 80% of its lifetime (from `iat`
 * when the token has one, else from now) or 30 s before `exp`, whichever comes first, but
 * not sooner than min(5 s, half the time left); 0 once expired. */
export function tokenRefreshDelay(token, now = Date.now()) {
  const claims = jwtClaims(token);
  if (!claims || typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) return null;
  const exp = claims.exp * 1000;
  const left = exp - now;
  if (left <= 0) return 0;
  const iat = typeof claims.iat === 'number' && claims.iat * 1000 <= now ? claims.iat * 1000 : now;
  const at = Math.min(iat + 0.8 * (exp - iat) - now, left - 30000);
  return Math.min(MAX_TIMER, Math.round(Math.max(at, Math.min(5000, left / 2))));
}

/** ms until a token's exp (null: none). */
function tokenLeft(token, now = Date.now()) {
  const claims = jwtClaims(token);
  return claims && typeof claims.exp === 'number' ? claims.exp * 1000 - now : null;
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

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** A member as the broker lists it: { conn (a string), user?, info? }. */
function memberOf(m) {
  const out = { conn: typeof m.conn === 'string' ? m.conn : String(m.conn) };
  if (m.user !== undefined && m.user !== null) out.user = m.user;
  if (m.info !== undefined && m.info !== null) out.info = m.info;
  return out;
}

/** Applies a join or leave event to a member list; returns the member added or removed,
 * or null when it changes nothing (a join of a conn listed, a leave of one not listed). */
function applyPresence(t, m) {
  const member = memberOf(m);
  if (m.op === 'join') {
    if (t.members.has(member.conn)) return null;
    t.members.set(member.conn, member);
    t.count = Math.max(t.count + 1, t.members.size);
    return member;
  }
  if (m.op !== 'leave') return null;
  const known = t.members.get(member.conn);
  if (!known) return null;
  t.members.delete(member.conn);
  t.count = Math.max(t.count - 1, t.members.size);
  return { ...known, ...member };
}

/** The member list of a subscription with presence. */
function newTracker() {
  return {
    members: new Map(), // conn -> member
    count: 0,
    exact: false, // the whole list, followed event by event
    complete: false, // the last read listed every member
    loaded: false, // read at least once
    reading: false, // a read is due or under way: events wait in queue
    queue: [],
    gen: 0, // of the latest read
    timer: null, // the re-read after count-only messages
    first: 0, // time of the first count-only message not followed by a read yet
    again: false, // a count-only message came during a read
  };
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
    if (this.options.getToken !== undefined && typeof this.options.getToken !== 'function') {
      throw new TypeError('gale: getToken must be a function');
    }
    this._baseUrl = url;
    this._token = typeof this.options.token === 'string' && this.options.token ? this.options.token : null;
    this.url = resolveUrl(url, this._token);
    this.state = 'connecting'; // 'connecting' | 'open' | 'closed'
    this.hello = null; // the broker's hello: { v, node, conn, max_msg }
    this._WS = this.options.WebSocket || globalThis.WebSocket;
    if (!this._WS) throw new TypeError('gale: no WebSocket implementation (pass options.WebSocket)');
    this._listeners = new Map();
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> { resolve, reject, timer, req (as sent), item }
    this._queue = []; // requests (publishes, history and presence calls) waiting for a connection
    // pattern -> { handlers: Set<{handler, onRecover, presence, onJoin, onLeave,
    //   onPresence}>, live, waiters: [], concrete, pos: {ep, off} | null (concrete topics
    //   with history), wasLive, seen, presence (sub with presence: true), info (sent with
    //   each sub), tracker (the member list, with presence) }
    this._subs = new Map();
    this._ownConns = new Set(); // conn ids of this client's connections (the last few)
    this._midPrefix = midPrefix();
    this._midCount = 0;
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._connectTimer = null;
    this._refreshTimer = null; // the next refresh of the token (getToken)
    this._refreshAttempt = 0; // refreshes refused in a row
    this._openGen = 0; // connection attempts: a token fetched for an older one is dropped
    this._lastRx = 0;
    this._codec = null;
    this._ready = enc === 'msgpack' ? loadCodec(this.options) : Promise.resolve(null);
    this._ready.then(
      (codec) => {
        this._codec = codec;
        if (this.state !== 'closed') this._open(true);
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
   * was made with `since`; see subscribe), 'join' and 'leave' ((member, topic)) and
   * 'presence' ({topic, count, members, exact}): for every subscription with presence, as
   * its onJoin, onLeave and onPresence; 'error' (Error). Returns a function that removes
   * the listener. */
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

  /** This connection's id (a string, as presence lists it: "<16 hex>-<n>"), or null while
   * not connected. */
  get conn() {
    return this.hello && this.hello.conn !== undefined ? String(this.hello.conn) : null;
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
   * handler(data, topic, {ep, off, reply}): ep/off are the message's stream position (absent
   * on topics without history); reply the publisher's reply topic (absent when it named
   * none: a NATS client's reply subject, or a gale publish's options.reply).
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
   * position the broker reported (absent without history).
   *
   * Presence (concrete topics the broker has --presence for; else the sub fails with
   * 'bad_request'):
   * options.presence (true; implied by onJoin, onLeave or onPresence): the broker also
   * sends join/leave events of this topic, and the client keeps its member list (see
   * members()): read with presence() once the sub is acked, before the promise resolves,
   * and again after each reconnect (the subscription is made again with the same presence
   * and info: the broker forgot the old connection). A subscription keeps presence until
   * the topic is unsubscribed; a later call asking for it on a topic subscribed without
   * it sends the sub again with presence: true.
   * options.info (an object; brokers without tokens only, with tokens the broker takes it
   * from the token): this connection's info as a member of the topic, sent with every
   * sub of it. Like since it counts when this call creates the subscription.
   * options.onJoin(member, topic) / onLeave(member, topic): a member {conn, user?, info?}
   * was added to / removed from the list: by a join/leave event (a join of a conn listed
   * already, or a leave of one not listed, changes nothing and is not reported), or, when
   * the list is read again (after a reconnect, after count-only messages), by the
   * differences found (when both lists are complete). Never about this client's own
   * connections.
   * options.onPresence({topic, count, members, exact}): after every change: the list read,
   * each join/leave applied, each count-only message. */
  subscribe(pattern, handler, options = {}) {
    if (typeof pattern !== 'string') return Promise.reject(new TypeError('gale: pattern must be a string'));
    if (typeof handler !== 'function') return Promise.reject(new TypeError('gale: handler must be a function'));
    const { since, onRecover, presence, info, onJoin, onLeave, onPresence } = options ?? {};
    const callbacks = { onRecover, onJoin, onLeave, onPresence };
    for (const [name, fn] of Object.entries(callbacks)) {
      if (fn !== undefined && typeof fn !== 'function') {
        return Promise.reject(new TypeError(`gale: ${name} must be a function`));
      }
    }
    if (since !== undefined && since !== null) {
      if (!isPosition(since)) {
        return Promise.reject(new TypeError('gale: since must be { ep: string, off: integer >= 0 }'));
      }
      if (!isConcrete(pattern)) return Promise.reject(new TypeError('gale: since needs a concrete topic'));
    }
    if (presence !== undefined && typeof presence !== 'boolean') {
      return Promise.reject(new TypeError('gale: presence must be a boolean'));
    }
    const watching = onJoin !== undefined || onLeave !== undefined || onPresence !== undefined;
    if (presence === false && watching) {
      return Promise.reject(new TypeError('gale: onJoin, onLeave and onPresence need presence'));
    }
    const wantsPresence = presence === true || watching;
    if (info !== undefined && !isObject(info)) return Promise.reject(new TypeError('gale: info must be an object'));
    if ((wantsPresence || info !== undefined) && !isConcrete(pattern)) {
      return Promise.reject(new TypeError('gale: presence and info need a concrete topic'));
    }
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    let sub = this._subs.get(pattern);
    const fresh = !sub;
    if (fresh) {
      sub = { handlers: new Set(), live: false, waiters: [], concrete: isConcrete(pattern), pos: null };
      sub.wasLive = false; // live on an earlier connection: the next sub is a recovery
      sub.seen = false; // pos moved by a msg since the last sub went out
      if (since) sub.pos = { ep: since.ep, off: since.off };
      sub.presence = wantsPresence;
      sub.info = info;
      sub.tracker = wantsPresence ? newTracker() : null;
      this._subs.set(pattern, sub);
    }
    const entry = { handler, onRecover, presence: wantsPresence, onJoin, onLeave, onPresence };
    sub.handlers.add(entry);
    const unsubscribe = () => this._unsubscribe(pattern, entry);
    // A topic subscribed without presence: subscribed again with it (now, or with the
    // next sub when not connected).
    const upgrade = !fresh && wantsPresence && !sub.presence;
    if (upgrade) {
      sub.presence = true;
      sub.tracker = newTracker();
    }
    if (sub.live && !upgrade) return Promise.resolve(unsubscribe);
    return new Promise((resolve, reject) => {
      const waiter = { resolve: () => resolve(unsubscribe), reject, entry };
      waiter.timer = setTimeout(() => {
        this._dropWaiter(pattern, waiter);
        reject(new GaleError('timeout', `no ack for sub ${pattern}`));
      }, this.options.timeout);
      if (upgrade && this._canSend()) {
        this._sendPresenceSub(pattern, sub, waiter);
        return;
      }
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
   * same mid, rather than rejected.
   *
   * options.reply: a topic where the publisher wants answers; every subscriber's message
   * carries it (NATS clients' request/reply, docs/PROTOCOL.md "Reply topics"). */
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
    if (options?.reply !== undefined) {
      if (typeof options.reply !== 'string') return Promise.reject(new TypeError('gale: reply must be a topic'));
      req.reply = options.reply;
    }
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

  /** Who is present on a concrete topic (the broker's --presence): resolves with {count,
   * members: [{conn, user?, info?}]}; count is exact, members at most the broker's
   * --presence-list-max. user: the token's sub; info: the token's gale.info, or the info
   * given to subscribe() on a broker without tokens. Rejects with 'bad_request' (a topic
   * without presence), 'bad_topic' (a pattern), 'forbidden'. Waits for the connection
   * like a publish; asked again after a reconnect when the answer is lost. */
  presence(topic) {
    if (typeof topic !== 'string') return Promise.reject(new TypeError('gale: topic must be a string'));
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    return this._enqueue({ op: 'presence', topic }, true).then((m) => {
      const members = (Array.isArray(m.members) ? m.members : []).filter(isObject).map(memberOf);
      return { count: Number.isSafeInteger(m.count) ? m.count : members.length, members };
    });
  }

  /** The member list kept for a topic subscribed with presence: {topic, count, members,
   * exact}, or null (not subscribed with presence). exact: members is the whole list,
   * followed event by event; false while not connected, after a count-only presence
   * message (until the list is read again), or when the broker capped the list (count >
   * members.length). */
  members(topic) {
    const sub = this._subs.get(topic);
    return sub?.tracker ? this._presenceState(topic, sub.tracker) : null;
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

  /** Sends a new token for this connection (`refresh`): the given one, else getToken()'s.
   * Resolves once the broker accepted it (from then on its expiry and permissions are the
   * connection's, and later connections use it too); rejects with the broker's GaleError
   * ('bad_request': refused, e.g. expired or badly signed; 'forbidden': another user's),
   * the connection keeping its token, or 'disconnected' (the token is then kept for the
   * next connection). */
  refreshToken(token) {
    if (this.state === 'closed') return Promise.reject(new GaleError('closed', 'the client is closed'));
    if (token !== undefined && (typeof token !== 'string' || token === '')) {
      return Promise.reject(new TypeError('gale: the token must be a non-empty string'));
    }
    if (token === undefined && !this.options.getToken) {
      return Promise.reject(new TypeError('gale: refreshToken() needs a token or the getToken option'));
    }
    const got = token !== undefined ? Promise.resolve(token) : this._fetchToken();
    return got.then(
      (tok) =>
        new Promise((resolve, reject) => {
          if (this.state === 'closed') {
            reject(new GaleError('closed', 'the client is closed'));
            return;
          }
          if (!this._canSend()) {
            this._setToken(tok);
            reject(new GaleError('disconnected', 'not connected: the token is kept for the next connection'));
            return;
          }
          const ws = this._ws;
          this._request({
            req: { op: 'refresh', token: tok },
            resolve: () => {
              this._setToken(tok);
              if (this._ws === ws) {
                this._refreshAttempt = 0;
                this._scheduleRefresh();
              }
              resolve();
            },
            reject,
          });
        }),
    );
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
    clearTimeout(this._refreshTimer);
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
      this._forget(sub);
      for (const w of sub.waiters) {
        clearTimeout(w.timer);
        w.reject(err);
      }
    }
    this._subs.clear();
    this._setState('closed', { code, reason });
  }

  // ---- tokens ----

  /** getToken()'s token, within the request timeout; its failures are GaleErrors 'token'
   * (with the original as `cause`): a token service that is down is an operational
   * problem, reported like the broker's. */
  _fetchToken() {
    return new Promise((resolve, reject) => {
      const fail = (msg, cause) => {
        const err = new GaleError('token', msg);
        if (cause !== undefined) err.cause = cause;
        reject(err);
      };
      const ms = this.options.timeout;
      const timer = setTimeout(() => fail(`getToken() did not answer within ${ms} ms`), ms);
      Promise.resolve()
        .then(() => this.options.getToken())
        .then(
          (tok) => {
            clearTimeout(timer);
            if (typeof tok === 'string' && tok !== '') resolve(tok);
            else fail(`getToken() gave ${tok === '' ? 'an empty string' : typeof tok}, not a token`);
          },
          (e) => {
            clearTimeout(timer);
            fail(`getToken() failed: ${e?.message ?? e}`, e);
          },
        );
    });
  }

  _setToken(token) {
    this._token = token;
    this.url = resolveUrl(this._baseUrl, token);
  }

  /** Arms the next refresh of the current token (getToken and a token with exp): after
   * `delay` ms when given (a retry), else when tokenRefreshDelay says. */
  _scheduleRefresh(delay) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.options.getToken || !this._token) return;
    const left = tokenLeft(this._token);
    if (left === null || left <= 0) return; // none, or expired: the reconnect gets a new one
    const wait = delay !== undefined ? delay : tokenRefreshDelay(this._token);
    this._refreshTimer = setTimeout(() => this._autoRefresh(), Math.min(MAX_TIMER, Math.max(0, wait)));
  }

  /** A refresh the timer asked for; refused, tried again with backoff until the token
   * expires. */
  _autoRefresh() {
    this._refreshTimer = null;
    if (!this._canSend()) return;
    const ws = this._ws;
    this.refreshToken().then(
      () => {},
      (e) => {
        if (this.state === 'closed' || ws !== this._ws || e.code === 'disconnected' || e.code === 'closed') return;
        this._emit('error', e);
        const left = tokenLeft(this._token);
        if (left === null || left <= 0) return;
        const delay = backoffDelay(this._refreshAttempt++, this.options);
        // The last try just before exp; after it the broker closes with 1008.
        this._scheduleRefresh(Math.min(delay, Math.max(0, left - 500)));
      },
    );
  }

  /** Starts a connection attempt: with getToken, with a token it gives (but the first
   * attempt uses options.token when there is one). */
  _open(first = false) {
    const gen = ++this._openGen;
    if (!this.options.getToken || (first && this._token)) {
      this._connect();
      return;
    }
    this._fetchToken().then(
      (tok) => {
        if (this.state === 'closed' || gen !== this._openGen) return;
        this._setToken(tok);
        this._connect();
      },
      (e) => {
        if (this.state === 'closed' || gen !== this._openGen) return;
        this._emit('error', e);
        this._scheduleReconnect({ code: 1006, reason: e.message });
      },
    );
  }

  _connect() {
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
    clearTimeout(this._refreshTimer);
    const wasOpen = this.state === 'open';
    // Publishes with a mid and history calls go out again after the reconnect: the mid
    // makes a second delivery impossible, a history call reads only.
    this._failPending(new GaleError('disconnected', `connection lost (${info.code})`), true);
    for (const sub of this._subs.values()) {
      if (sub.live) sub.wasLive = true;
      sub.live = false;
      const t = sub.tracker;
      if (t) {
        // The broker forgets this connection: the list is read again after the reconnect.
        clearTimeout(t.timer);
        Object.assign(t, { exact: false, reading: false, queue: [], timer: null, first: 0, again: false });
      }
    }
    if (wasOpen || this.hello) this._emit('disconnect', info);
    if (info.code === 1008 && !this.options.getToken) {
      // Policy: the token is invalid or expired, or the origin is not allowed.
      // Retrying with the same credentials cannot help (with getToken, new ones can).
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
    if (sub.presence) req.presence = true;
    if (sub.info !== undefined) req.info = sub.info;
    const report = req.since !== undefined || sub.wasLive;
    sub.seen = false;
    // Events that come before the list is read are applied to it once it is.
    if (sub.tracker) sub.tracker.reading = true;
    return new Promise((resolve) => {
      this._request({
        req,
        resolve: (ack) => {
          if (this._subs.get(pattern) === sub) {
            if (sub.concrete) this._ackPosition(sub, ack);
            sub.live = true;
            if (report) this._recovered(pattern, sub, ack);
            const waiters = sub.waiters.splice(0);
            for (const w of waiters) clearTimeout(w.timer);
            const done = () => {
              for (const w of waiters) w.resolve();
            };
            if (sub.tracker) this._readPresence(pattern, sub).then(done);
            else done();
          }
          resolve();
        },
        reject: (err) => {
          if (this._subs.get(pattern) === sub && err.code !== 'disconnected') {
            // The broker refused the pattern: nobody gets it.
            this._forget(sub);
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

  // ---- presence ----

  /** Subscribes a topic held without presence again, with presence: true (the broker
   * keeps the membership and its info; the latest sub decides about events). Settles the
   * waiter of the subscribe() call that asked for it once the list is read. */
  _sendPresenceSub(pattern, sub, waiter) {
    const t = sub.tracker;
    t.reading = true;
    this._request({
      req: { op: 'sub', topic: pattern, presence: true },
      resolve: () => {
        if (this._subs.get(pattern) !== sub) return;
        clearTimeout(waiter.timer);
        this._readPresence(pattern, sub).then(() => waiter.resolve());
      },
      reject: (err) => {
        if (this._subs.get(pattern) !== sub) return;
        if (err.code === 'disconnected') {
          sub.waiters.push(waiter); // settled by the sub after the reconnect (with presence)
          return;
        }
        // Refused (e.g. a topic without presence): the subscription stays as it was.
        clearTimeout(waiter.timer);
        if (sub.tracker === t && ![...sub.handlers].some((e) => e.presence && e !== waiter.entry)) {
          this._forget(sub);
          sub.presence = false;
        }
        this._dropWaiter(pattern, waiter);
        waiter.reject(err);
      },
    });
  }

  /** Reads the member list of a subscription with presence; resolves once it is applied
   * (or the read failed). */
  _readPresence(pattern, sub) {
    const t = sub.tracker;
    if (!t || !this._canSend()) return Promise.resolve();
    clearTimeout(t.timer);
    Object.assign(t, { timer: null, first: 0, again: false, reading: true });
    const gen = ++t.gen;
    return new Promise((resolve) => {
      this._request({
        req: { op: 'presence', topic: pattern },
        resolve: (m) => {
          if (sub.tracker === t && t.gen === gen) this._presenceLoaded(pattern, sub, m);
          resolve();
        },
        reject: (err) => {
          if (sub.tracker === t && t.gen === gen && err.code !== 'disconnected' && err.code !== 'closed') {
            // The list stays as it was, with the events that came meanwhile.
            t.reading = false;
            for (const ev of t.queue.splice(0)) this._presenceEvent(ev);
            this._emit('error', err);
          }
          resolve();
        },
      });
    });
  }

  /** The answer to a read: the new list, with the events that came meanwhile applied on
   * top (those already in it change nothing), then the differences reported. */
  _presenceLoaded(pattern, sub, m) {
    const t = sub.tracker;
    const old = t.members;
    const wasComplete = t.loaded && t.complete;
    t.members = new Map();
    for (const x of Array.isArray(m.members) ? m.members : []) {
      if (!isObject(x)) continue;
      const member = memberOf(x);
      t.members.set(member.conn, member);
    }
    t.count = Math.max(Number.isSafeInteger(m.count) ? m.count : 0, t.members.size);
    t.complete = t.count <= t.members.size;
    t.reading = false;
    for (const ev of t.queue.splice(0)) applyPresence(t, ev);
    t.exact = t.complete && !t.again;
    const first = !t.loaded;
    t.loaded = true;
    if (t.again) this._presenceRefresh(pattern, sub);
    if (!first && wasComplete && t.complete) {
      for (const [conn, member] of old) if (!t.members.has(conn)) this._presenceMember(pattern, sub, 'leave', member);
      for (const [conn, member] of t.members) if (!old.has(conn)) this._presenceMember(pattern, sub, 'join', member);
    }
    this._presenceChanged(pattern, sub);
  }

  /** A join or leave event. */
  _presenceEvent(m) {
    const sub = typeof m.topic === 'string' ? this._subs.get(m.topic) : undefined;
    const t = sub?.tracker;
    if (!t || m.conn === undefined) return;
    if (t.reading) {
      t.queue.push(m);
      return;
    }
    const member = applyPresence(t, m);
    if (!member) return; // a join of a conn listed, a leave of one not listed
    this._presenceMember(m.topic, sub, m.op, member);
    this._presenceChanged(m.topic, sub);
  }

  /** A count-only presence message: the topic is past the broker's
   * --presence-events-max, join/leave events no longer come. The list is read again
   * once these messages stop for presenceDelay ms, at the latest 10 x that after the
   * first. */
  _presenceCount(m) {
    const sub = typeof m.topic === 'string' ? this._subs.get(m.topic) : undefined;
    const t = sub?.tracker;
    if (!t || !Number.isSafeInteger(m.count)) return;
    t.count = m.count;
    t.exact = false;
    if (t.reading) t.again = true;
    else this._presenceRefresh(m.topic, sub);
    this._presenceChanged(m.topic, sub);
  }

  _presenceRefresh(pattern, sub) {
    const t = sub.tracker;
    const delay = Math.max(0, this.options.presenceDelay);
    const now = Date.now();
    if (!t.first) t.first = now;
    clearTimeout(t.timer);
    t.timer = setTimeout(
      () => {
        t.timer = null;
        if (sub.tracker === t && sub.live && this._subs.get(pattern) === sub) this._readPresence(pattern, sub);
      },
      Math.max(0, Math.min(delay, t.first + 10 * delay - now)),
    );
  }

  _presenceState(topic, t) {
    return { topic, count: t.count, members: [...t.members.values()].map((x) => ({ ...x })), exact: t.exact };
  }

  /** Reports a member added (op 'join') or removed ('leave') to the subscription's
   * onJoin/onLeave and the client's event; not about this client's own connections. */
  _presenceMember(topic, sub, op, member) {
    if (this._ownConns.has(member.conn)) return;
    const key = op === 'join' ? 'onJoin' : 'onLeave';
    for (const entry of [...sub.handlers]) {
      if (!entry[key]) continue;
      try {
        entry[key]({ ...member }, topic);
      } catch (e) {
        this._emit('error', e);
      }
    }
    this._emit(op, { ...member }, topic);
  }

  _presenceChanged(topic, sub) {
    const t = sub.tracker;
    for (const entry of [...sub.handlers]) {
      if (!entry.onPresence) continue;
      try {
        entry.onPresence(this._presenceState(topic, t));
      } catch (e) {
        this._emit('error', e);
      }
    }
    if (this._listeners.get('presence')?.size) this._emit('presence', this._presenceState(topic, t));
  }

  /** A subscription is gone (or its presence): its list with it. */
  _forget(sub) {
    if (sub.tracker) clearTimeout(sub.tracker.timer);
    sub.tracker = null;
  }

  _dropWaiter(pattern, waiter) {
    const sub = this._subs.get(pattern);
    if (!sub) return;
    sub.waiters = sub.waiters.filter((w) => w !== waiter);
    sub.handlers.delete(waiter.entry);
    if (sub.handlers.size === 0) {
      this._forget(sub);
      this._subs.delete(pattern);
      if (this._canSend()) this._request({ req: { op: 'unsub', topic: pattern }, resolve() {}, reject() {} });
    }
  }

  _unsubscribe(pattern, entry) {
    const sub = this._subs.get(pattern);
    if (!sub || !sub.handlers.delete(entry)) return Promise.resolve();
    if (sub.handlers.size > 0) return Promise.resolve();
    this._forget(sub);
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

  /** The broker dropped the subscription of a pattern (an err naming it: a refreshed token
   * that no longer allows it): the client forgets it too. */
  _dropped(pattern, err) {
    err.topic = pattern;
    const sub = this._subs.get(pattern);
    if (!sub) return;
    this._forget(sub);
    this._subs.delete(pattern);
    for (const w of sub.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
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
      case 'join':
      case 'leave':
        this._presenceEvent(m);
        break;
      case 'presence':
        if (m.id === undefined) {
          this._presenceCount(m); // count-only: the topic is past --presence-events-max
          break;
        }
      // falls through: the answer to a presence request
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
          if (m.id === undefined && typeof m.topic === 'string') this._dropped(m.topic, err);
          this._emit('error', err);
        }
        break;
      }
      case 'hello':
        clearTimeout(this._connectTimer);
        this.hello = m;
        this._refreshAttempt = 0;
        this._scheduleRefresh();
        if (m.conn !== undefined) {
          this._ownConns.add(String(m.conn));
          if (this._ownConns.size > 16) this._ownConns.delete(this._ownConns.values().next().value);
        }
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
    if (typeof m.reply === 'string') info.reply = m.reply;
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

// An in-process stand-in for gale-broker, for unit tests of gale.js: a WebSocket class
// (passed to connect() as options.WebSocket) whose sockets talk to a FakeBroker that
// speaks protocol v1 with the additions (history, `sub` with `since`, `hist`, `mid`,
// presence: `presence`, `sub` with `presence`/`info`, join/leave, count-only messages;
// tokens with `auth`: the handshake's token, `refresh`, expiry closing with 1008),
// in JSON and MessagePack. Tests drive what a real broker makes hard to provoke: dropped
// connections at exact moments, lost acks, epoch changes, trimmed history, duplicates,
// duplicate or stray presence events, events racing a presence answer.
//
//   const broker = new FakeBroker({ history: { 'chat.>': 100 }, presence: ['chat.*.msg'] });
//   const c = connect('ws://fake/ws', { WebSocket: broker.WebSocket });
import * as msgpack from '@msgpack/msgpack';
import { matchPattern } from '../../../web/gale.js';

const PROTOCOLS = { 'gale.v1.json': 'json', 'gale.v1.msgpack': 'msgpack' };

function isPattern(t) {
  return t.split('.').some((s) => s === '*' || s === '>');
}

function utf8Length(s) {
  return new TextEncoder().encode(s).length;
}

/** One broker-side connection. */
class Conn {
  constructor(broker, socket, id) {
    this.broker = broker;
    this.socket = socket;
    this.id = id;
    this.encoding = PROTOCOLS[socket.protocol];
    this.subs = new Set();
    this.watching = new Set(); // topics subscribed with presence: true
    this.info = new Map(); // topic -> the info of its sub
    this.open = true;
    this.token = null; // with auth: the current token and what auth() said of it
    this.claims = null;
    this.expTimer = null;
  }

  /** Takes a token's claims: its expiry closes the connection with 1008. */
  grant(token, claims) {
    this.token = token;
    this.claims = claims;
    clearTimeout(this.expTimer);
    this.expTimer = null;
    if (typeof claims.exp === 'number') {
      this.expTimer = setTimeout(() => this.drop(1008, 'token expired'), Math.max(0, claims.exp * 1000 - Date.now()));
      this.expTimer.unref(); // never what keeps the test process alive
    }
  }

  /** Sends a message to the client (asynchronously, in order). */
  send(msg) {
    if (!this.open) return;
    let frame;
    if (this.encoding === 'json') {
      const m = { ...msg };
      if (m.data instanceof Uint8Array) {
        m.bin = Buffer.from(m.data).toString('base64');
        delete m.data;
      }
      if (Array.isArray(m.msgs)) {
        m.msgs = m.msgs.map((x) =>
          x.data instanceof Uint8Array ? { off: x.off, bin: Buffer.from(x.data).toString('base64') } : x,
        );
      }
      frame = JSON.stringify(m);
    } else {
      const bytes = msgpack.encode(msg);
      frame = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    }
    this.broker.sent.push({ conn: this, msg });
    setTimeout(() => {
      if (this.open) this.socket._dispatch('message', { data: frame });
    }, 0);
  }

  /** Ends the connection from the broker's side: the client sees a close with code. */
  drop(code = 1006, reason = '') {
    if (!this.open) return;
    this.open = false;
    clearTimeout(this.expTimer);
    this.broker.conns.delete(this);
    this.broker._gone(this);
    // With broker.dropDelay the socket is CLOSING for that long before its close event.
    const delay = this.broker.dropDelay;
    this.socket.readyState = delay > 0 ? 2 : 3;
    setTimeout(() => {
      this.socket.readyState = 3;
      this.socket._dispatch('close', { code, reason });
    }, delay);
  }
}

/** The instance part of the fake broker's conn ids ("<16 hex>-<n>", as gale-broker's). */
export const INSTANCE = '0123456789abcdef';

export class FakeBroker {
  /** history: { PATTERN: SIZE }, the first matching pattern wins (like --history).
   * presence: [PATTERN, ...] (like --presence); presenceListMax, presenceEventsMax: like
   * --presence-list-max and --presence-events-max (past it no join/leave events: a test
   * sends count-only messages with presenceCount()). auth: (token) => claims or null (a
   * broker with tokens: the handshake's `token` query parameter must pass, `refresh` too;
   * claims { user, exp (seconds), sub: [patterns] }: exp closes the connection with 1008, a
   * refresh whose sub no longer allows a subscription drops it with an err naming it). */
  constructor({
    history = {},
    maxMsg = 1 << 20,
    presence = [],
    presenceListMax = 1000,
    presenceEventsMax = 1000,
    auth = null,
  } = {}) {
    this.auth = auth;
    this.history = Object.entries(history);
    this.presence = presence;
    this.presenceListMax = presenceListMax;
    this.presenceEventsMax = presenceEventsMax;
    this.maxMsg = maxMsg;
    this.conns = new Set();
    this.streams = new Map(); // topic -> { ep, off, msgs: [{ off, data }] }
    this.mids = new Map(); // topic \0 mid -> { off }
    this.received = []; // every frame from a client, decoded: { conn, msg }
    this.sent = []; // every message to a client: { conn, msg }
    this.down = false; // true: connection attempts fail
    this.epochs = 0;
    this.connCount = 0;
    this.handshakes = []; // with auth: the token of every connection attempt
    this.replayOverlap = 0; // > 0: a faulty replay that also resends that many old messages
    this.dropDelay = 0; // ms a dropped socket stays CLOSING before its close event
    // Called with (conn, msg) before a client frame is handled; returning 'drop' closes the
    // connection before handling it, 'lose-ack' handles it and closes instead of
    // answering, 'ignore' swallows it.
    this.onRequest = null;
    const broker = this;
    this.WebSocket = class FakeWebSocket {
      constructor(url, protocol) {
        this.url = url;
        this.protocol = protocol;
        this.readyState = 0;
        this.binaryType = 'blob';
        this._listeners = { open: new Set(), message: new Set(), close: new Set(), error: new Set() };
        setTimeout(() => broker._accept(this), 0);
      }

      addEventListener(type, fn) {
        this._listeners[type]?.add(fn);
      }

      removeEventListener(type, fn) {
        this._listeners[type]?.delete(fn);
      }

      _dispatch(type, ev) {
        for (const fn of [...this._listeners[type]]) fn(ev);
      }

      send(frame) {
        if (this.readyState !== 1) throw new Error('not open');
        const conn = this._conn;
        let msg;
        if (conn.encoding === 'json') {
          if (typeof frame !== 'string') throw new Error('binary frame on a JSON connection');
          msg = JSON.parse(frame);
        } else {
          msg = msgpack.decode(frame);
        }
        setTimeout(() => {
          if (conn.open) broker._handle(conn, msg);
        }, 0);
      }

      close(code = 1000, reason = '') {
        if (this.readyState >= 2) return;
        this.readyState = 2;
        const conn = this._conn;
        setTimeout(() => {
          if (conn && conn.open) {
            conn.open = false;
            clearTimeout(conn.expTimer); // the client closed: its token's expiry is moot
            broker.conns.delete(conn);
            broker._gone(conn);
          }
          this.readyState = 3;
          this._dispatch('close', { code, reason });
        }, 0);
      }
    };
  }

  _accept(socket) {
    if (socket.readyState !== 0) return; // closed before it was accepted
    let token = null;
    let claims = null;
    if (this.auth) {
      token = new URL(socket.url).searchParams.get('token');
      claims = token ? this.auth(token) : null;
      this.handshakes.push(token);
    }
    if (this.down || !PROTOCOLS[socket.protocol] || (this.auth && !claims)) {
      // A refused handshake (a 401 too) is a failed connection to a browser.
      socket.readyState = 3;
      socket._dispatch('error', {});
      socket._dispatch('close', { code: 1006, reason: '' });
      return;
    }
    const conn = new Conn(this, socket, `${INSTANCE}-${++this.connCount}`);
    if (claims) conn.grant(token, claims);
    socket._conn = conn;
    socket.readyState = 1;
    this.conns.add(conn);
    socket._dispatch('open', {});
    conn.send({ op: 'hello', v: 1, node: 'fake', conn: conn.id, max_msg: this.maxMsg });
  }

  /** The history size of a topic, or 0. */
  historySize(topic) {
    for (const [p, size] of this.history) if (matchPattern(p, topic)) return size;
    return 0;
  }

  /** The stream of a topic with history (created empty on first use). */
  stream(topic) {
    if (!this.historySize(topic)) return null;
    let s = this.streams.get(topic);
    if (!s) {
      s = { ep: `e${++this.epochs}`, off: 0, msgs: [] };
      this.streams.set(topic, s);
    }
    return s;
  }

  /** Whether a topic has presence. */
  hasPresence(topic) {
    return this.presence.some((p) => matchPattern(p, topic));
  }

  /** The members of a topic: every connection holding a sub of exactly it. */
  members(topic) {
    return [...this.conns].filter((c) => c.subs.has(topic)).map((c) => this.member(c, topic));
  }

  member(conn, topic) {
    const m = { conn: conn.id };
    if (conn.info.has(topic)) m.info = conn.info.get(topic);
    return m;
  }

  /** Sends msg to every connection watching topic (presence: true), but the one it is
   * about; as the broker does, nothing past presenceEventsMax members. */
  presenceEvent(topic, msg, { force = false } = {}) {
    if (!force && this.members(topic).length > this.presenceEventsMax) return;
    for (const c of this.conns) {
      if (c.watching.has(topic) && c.id !== msg.conn) c.send({ ...msg, topic });
    }
  }

  /** Sends the count-only presence message of a topic to its watchers. */
  presenceCount(topic) {
    const count = this.members(topic).length;
    for (const c of this.conns) if (c.watching.has(topic)) c.send({ op: 'presence', topic, count });
  }

  /** A connection closed: it leaves every topic it was present on. */
  _gone(conn) {
    for (const t of conn.subs) {
      if (!isPattern(t) && this.hasPresence(t)) this.presenceEvent(t, { op: 'leave', ...this.member(conn, t) });
    }
  }

  /** Every client frame of op (optionally only those of one topic). */
  requests(op, topic) {
    return this.received.map((r) => r.msg).filter((m) => m.op === op && (topic === undefined || m.topic === topic));
  }

  /** Publishes as another client would (whether or not anyone is connected). */
  publish(topic, data, mid) {
    return this._publish(topic, data, mid);
  }

  /** Drops every connection (the broker's side: 1006, as a network failure looks). */
  dropAll(code = 1006) {
    for (const c of [...this.conns]) c.drop(code);
  }

  /** A broker restart: every stream loses continuity (a new epoch, its messages gone). */
  restart() {
    this.dropAll(1001);
    for (const s of this.streams.values()) {
      s.ep = `e${++this.epochs}`;
      s.off = 0;
      s.msgs = [];
    }
  }

  /** Keeps only the last n messages of topic, as expiry would. */
  trim(topic, n) {
    const s = this.streams.get(topic);
    s.msgs = s.msgs.slice(Math.max(0, s.msgs.length - n));
  }

  _publish(topic, data, mid) {
    const s = this.stream(topic);
    const key = mid === undefined ? undefined : `${topic}\0${mid}`;
    if (key !== undefined && this.mids.has(key)) {
      const ack = { dup: true };
      if (s) Object.assign(ack, { ep: s.ep, off: this.mids.get(key).off });
      return ack;
    }
    const msg = { op: 'msg', topic, data };
    const ack = {};
    if (s) {
      s.off++;
      s.msgs.push({ off: s.off, data });
      const size = this.historySize(topic);
      if (s.msgs.length > size) s.msgs.shift();
      Object.assign(msg, { ep: s.ep, off: s.off });
      Object.assign(ack, { ep: s.ep, off: s.off });
    }
    if (key !== undefined) this.mids.set(key, { off: s ? s.off : 0 });
    for (const c of this.conns) {
      if ([...c.subs].some((p) => matchPattern(p, topic))) c.send(msg);
    }
    return ack;
  }

  _handle(conn, msg) {
    this.received.push({ conn, msg });
    const verdict = this.onRequest ? this.onRequest(conn, msg) : undefined;
    if (verdict === 'ignore') return;
    if (verdict === 'drop') {
      conn.drop();
      return;
    }
    const id = msg.id;
    const reply = (m) => {
      if (verdict === 'lose-ack') {
        conn.drop();
        return;
      }
      conn.send(id === undefined ? m : { ...m, id });
    };
    const err = (code, text) => {
      const m = { op: 'err', code, msg: text };
      conn.send(id === undefined ? m : { ...m, id });
    };
    switch (msg.op) {
      case 'ping':
        reply({ op: 'pong' });
        return;
      case 'sub': {
        const t = msg.topic;
        if (msg.presence !== undefined && typeof msg.presence !== 'boolean') {
          err('bad_request', 'presence must be a boolean');
          return;
        }
        if (msg.info !== undefined && (msg.info === null || typeof msg.info !== 'object' || Array.isArray(msg.info))) {
          err('bad_request', 'info must be an object');
          return;
        }
        if ((msg.presence === true || msg.info !== undefined) && (isPattern(t) || !this.hasPresence(t))) {
          err('bad_request', 'topic has no presence (--presence)');
          return;
        }
        if (msg.since !== undefined) {
          const ok =
            msg.since !== null && typeof msg.since === 'object' && typeof msg.since.ep === 'string' &&
            Number.isInteger(msg.since.off) && msg.since.off >= 0;
          if (!ok || isPattern(t)) {
            err('bad_request', 'since needs a concrete topic and {ep, off}');
            return;
          }
        }
        const joined = !conn.subs.has(t);
        conn.subs.add(t);
        if (msg.presence === true) conn.watching.add(t);
        else conn.watching.delete(t);
        if (joined && !isPattern(t) && this.hasPresence(t)) {
          if (msg.info !== undefined) conn.info.set(t, msg.info);
          this.presenceEvent(t, { op: 'join', ...this.member(conn, t) });
        }
        const s = isPattern(t) ? null : this.stream(t);
        if (msg.since === undefined) {
          reply(s ? { op: 'ack', ep: s.ep, off: s.off } : { op: 'ack' });
          return;
        }
        const { ep, off } = msg.since;
        const first = s && s.msgs.length ? s.msgs[0].off : s ? s.off + 1 : 0;
        if (s && ep === s.ep && off <= s.off && first <= off + 1) {
          let last = off;
          for (const m of s.msgs) {
            if (m.off > off - this.replayOverlap) {
              conn.send({ op: 'msg', topic: t, ep: s.ep, off: m.off, data: m.data });
              last = Math.max(last, m.off);
            }
          }
          reply({ op: 'ack', recovered: true, ep: s.ep, off: last });
        } else {
          reply(s ? { op: 'ack', recovered: false, ep: s.ep, off: s.off } : { op: 'ack', recovered: false });
        }
        return;
      }
      case 'unsub': {
        const t = msg.topic;
        if (conn.subs.has(t) && !isPattern(t) && this.hasPresence(t)) {
          const member = this.member(conn, t);
          conn.subs.delete(t);
          this.presenceEvent(t, { op: 'leave', ...member });
        }
        conn.subs.delete(t);
        conn.watching.delete(t);
        conn.info.delete(t);
        reply({ op: 'ack' });
        return;
      }
      case 'presence': {
        if (isPattern(msg.topic)) {
          err('bad_topic', 'presence of a pattern');
          return;
        }
        if (!this.hasPresence(msg.topic)) {
          err('bad_request', 'topic has no presence (--presence)');
          return;
        }
        const all = this.members(msg.topic);
        reply({ op: 'presence', topic: msg.topic, count: all.length, members: all.slice(0, this.presenceListMax) });
        return;
      }
      case 'pub': {
        if (isPattern(msg.topic)) {
          err('bad_topic', 'pub to a pattern');
          return;
        }
        const midBytes = typeof msg.mid === 'string' ? utf8Length(msg.mid) : 0;
        if (msg.mid !== undefined && (midBytes < 1 || midBytes > 64)) {
          err('bad_request', 'mid');
          return;
        }
        reply({ op: 'ack', ...this._publish(msg.topic, msg.data, msg.mid) });
        return;
      }
      case 'refresh': {
        if (!this.auth) {
          err('bad_request', 'this broker has no authentication');
          return;
        }
        const claims = typeof msg.token === 'string' && msg.token ? this.auth(msg.token) : null;
        if (!claims) {
          err('bad_request', 'token refused: bad token');
          return;
        }
        if (claims.user !== conn.claims.user) {
          err('forbidden', "the token is another user's");
          return;
        }
        conn.grant(msg.token, claims);
        reply({ op: 'ack' });
        if (Array.isArray(claims.sub)) {
          const allowed = (p) => claims.sub.some((g) => g === p || (!isPattern(p) && matchPattern(g, p)));
          for (const p of [...conn.subs]) {
            if (allowed(p)) continue;
            conn.subs.delete(p);
            conn.watching.delete(p);
            conn.send({ op: 'err', code: 'forbidden', topic: p, msg: 'subscription dropped' });
          }
        }
        return;
      }
      case 'hist': {
        if (isPattern(msg.topic)) {
          err('bad_topic', 'hist of a pattern');
          return;
        }
        const s = this.stream(msg.topic);
        if (!s) {
          reply({ op: 'hist', off: 0, msgs: [] });
          return;
        }
        const limit = msg.limit ?? 100;
        const msgs = limit > 0 ? s.msgs.slice(-limit) : [];
        reply({ op: 'hist', ep: s.ep, off: s.off, msgs: msgs.map((m) => ({ off: m.off, data: m.data })) });
        return;
      }
      default:
        err('unknown_op', msg.op);
    }
  }
}

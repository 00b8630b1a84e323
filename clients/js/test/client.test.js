// gale.js against a real gale-broker. Run: node --experimental-websocket --test test/
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { createHmac } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as msgpack from '@msgpack/msgpack';
import { Broker, SOURCE_DIR, TcpProxy, WEB_ROOT, brokerHas, sleep, startBroker, waitFor, freePort } from './broker.js';
import { FakeBroker } from './fake-broker.js';
import { GaleError, backoffDelay, connect, matchPattern, tokenRefreshDelay } from '../../../web/gale.js';

const T = { timeout: 30000 };

// What the newer tests open: closeAll (their afterEach) closes or stops it, so that a
// failed test does not leave a client reconnecting (or a proxy, a broker) forever.
const openThings = new Set();
function closeAll() {
  const all = [...openThings];
  openThings.clear();
  return Promise.all(all.map((x) => (x.stop ? x.stop() : x.close())));
}

/** A client whose every event is recorded in c.events. */
function client(url, opts = {}) {
  const c = connect(url, { minDelay: 50, maxDelay: 400, ...opts });
  openThings.add(c);
  c.events = [];
  for (const ev of ['connecting', 'open', 'disconnect', 'closed']) c.on(ev, (d) => c.events.push(ev));
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  return c;
}

const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

/** An HS256 JWT of claims signed with secret (the real broker checks it; the fake one only
 * reads the claims). */
function jwt(claims, secret = 'unused') {
  const hp = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${hp}.${createHmac('sha256', secret).update(hp).digest('base64url')}`;
}

const nowS = () => Math.floor(Date.now() / 1000);

const opened = (c) => (c.state === 'open' ? Promise.resolve(c.hello) : new Promise((r) => c.on('open', r)));

/** Collects what a subscription receives. */
function inbox() {
  const got = [];
  const info = [];
  const fn = (data, topic, meta) => {
    got.push({ topic, data });
    info.push(meta);
  };
  fn.got = got;
  fn.info = info; // the third argument of each call: { ep, off } or {}
  fn.data = () => got.map((m) => m.data);
  fn.wait = (n, ms = 5000) => waitFor(() => got.length >= n, ms, `${n} message(s)`);
  return fn;
}

describe('pure helpers', () => {
  test('matchPattern follows the protocol', () => {
    const cases = [
      ['a.b', 'a.b', true],
      ['a.b', 'a.c', false],
      ['a.*', 'a.b', true],
      ['a.*', 'a', false],
      ['a.*', 'a.b.c', false],
      ['a.>', 'a.b', true],
      ['a.>', 'a.b.c', true],
      ['a.>', 'a', false],
      ['>', 'x', true],
      ['>', 'x.y.z', true],
      ['*.b.*', 'a.b.c', true],
      ['*.b.*', 'a.c.c', false],
      ['*', 'a.b', false],
      ['a.*.>', 'a.b', false],
      ['a.*.>', 'a.b.c.d', true],
    ];
    for (const [p, t, want] of cases) assert.equal(matchPattern(p, t), want, `${p} vs ${t}`);
  });

  test('backoffDelay grows exponentially, is capped, and is jittered', () => {
    const opts = { minDelay: 100, maxDelay: 5000, jitter: 0.5 };
    assert.equal(backoffDelay(0, opts, () => 0), 100);
    assert.equal(backoffDelay(1, opts, () => 0), 200);
    assert.equal(backoffDelay(4, opts, () => 0), 1600);
    assert.equal(backoffDelay(10, opts, () => 0), 5000);
    assert.equal(backoffDelay(1000, opts, () => 0), 5000);
    assert.equal(backoffDelay(3, opts, () => 0.999999), 400);
    for (let a = 0; a < 12; a++) {
      const d = backoffDelay(a, opts);
      const top = Math.min(5000, 100 * 2 ** a);
      assert.ok(d >= top / 2 && d <= top, `attempt ${a}: ${d}`);
    }
  });

  test('connect needs a URL outside a browser, and a known encoding', () => {
    assert.throws(() => connect(), /needs a URL/);
    assert.throws(() => connect('ws://127.0.0.1:1/ws', { encoding: 'xml' }), /unknown encoding/);
  });

  test('tokenRefreshDelay: 80% of the lifetime or 30 s before exp, not sooner than min(5 s, half the rest)', () => {
    const now = 1_700_000_000_000;
    const s = now / 1000;
    assert.equal(tokenRefreshDelay(jwt({ exp: s + 3600 }), now), 2880000); // 80% of an hour
    assert.equal(tokenRefreshDelay(jwt({ exp: s + 60 }), now), 30000); // 30 s before exp
    assert.equal(tokenRefreshDelay(jwt({ exp: s + 40 }), now), 10000);
    assert.equal(tokenRefreshDelay(jwt({ exp: s + 20 }), now), 5000); // not sooner than 5 s
    assert.equal(tokenRefreshDelay(jwt({ exp: s + 3 }), now), 1500); // half of what is left
    // Lifetime counted from iat: 80% of 100 s from iat, 50 s ago.
    assert.equal(tokenRefreshDelay(jwt({ iat: s - 50, exp: s + 50 }), now), 20000);
    assert.equal(tokenRefreshDelay(jwt({ exp: s - 1 }), now), 0);
    assert.ok(tokenRefreshDelay(jwt({ exp: s + 1e9 }), now) <= 2 ** 31 - 1);
    for (const t of [jwt({ sub: 'a' }), jwt({ exp: '1' }), 'not.a.jwt', 'x', '', 'a.b']) {
      assert.equal(tokenRefreshDelay(t, now), null, t);
    }
  });

  test('getToken must be a function', () => {
    assert.throws(() => connect('ws://127.0.0.1:1/ws', { getToken: 'tok' }), /getToken must be a function/);
  });

  test('URL: http becomes ws, /ws is the default path, the token is a query parameter', () => {
    const c = connect('http://127.0.0.1:1', { token: 's3cr&t', minDelay: 10000 });
    assert.equal(c.url, 'ws://127.0.0.1:1/ws?token=s3cr%26t');
    c.close();
  });
});

describe('against a broker', () => {
  let broker;
  before(async () => {
    broker = await startBroker();
  });
  after(() => broker.stop());

  test('states: connecting, then open with the hello; close() ends in closed', T, async () => {
    const c = client(broker.wsUrl);
    assert.equal(c.state, 'connecting');
    const states = [];
    c.on('state', (s) => states.push(s));
    const hello = await opened(c);
    assert.equal(hello.v, 1);
    assert.ok(hello.max_msg > 0);
    assert.equal(c.state, 'open');
    assert.ok(await c.ping() >= 0);
    await c.close();
    assert.equal(c.state, 'closed');
    assert.deepEqual(states, ['connecting', 'open', 'closed']);
    await assert.rejects(c.publish('a.b', 1), { code: 'closed' });
    await assert.rejects(c.subscribe('a.b', () => {}), { code: 'closed' });
  });

  test('subscribe resolves on ack; publish reaches it with data and topic', T, async () => {
    const sub = client(broker.wsUrl);
    const pub = client(broker.wsUrl);
    const box = inbox();
    // Called before the connection is open: it waits for it.
    const off = await sub.subscribe('room.*.chat', box);
    assert.equal(typeof off, 'function');
    await opened(pub);
    const data = { text: 'hi', n: [1, 2.5, null, true], nested: { 'ü': 'ß' } };
    const ack = await pub.publish('room.42.chat', data);
    assert.equal(ack.op, 'ack');
    await pub.publish('room.42.other', 'not for you');
    await pub.publish('room.43.chat', 'second');
    await box.wait(2);
    assert.deepEqual(box.got, [
      { topic: 'room.42.chat', data },
      { topic: 'room.43.chat', data: 'second' },
    ]);
    await off();
    await pub.publish('room.44.chat', 'after unsub');
    await sub.ping(); // anything still in flight has arrived by now
    await sleep(50);
    assert.equal(box.got.length, 2);
    assert.deepEqual(sub.patterns(), []);
    await Promise.all([sub.close(), pub.close()]);
  });

  test('publish with options.reply: the handler gets the reply topic (NATS request/reply)', T, async () => {
    const sub = client(broker.wsUrl);
    const pub = client(broker.wsUrl);
    const got = [];
    await sub.subscribe('svc.echo', (data, topic, info) => got.push({ data, topic, info }));
    await opened(pub);
    await pub.publish('svc.echo', { q: 1 }, { reply: '_INBOX.js.1' });
    await pub.publish('svc.echo', { q: 2 });
    await assert.rejects(pub.publish('svc.echo', 1, { reply: 'a..b' }), { code: 'bad_topic' });
    await assert.rejects(pub.publish('svc.echo', 1, { reply: 7 }), TypeError);
    await waitFor(() => got.length === 2, 5000, 'two messages');
    assert.deepEqual(got, [
      { data: { q: 1 }, topic: 'svc.echo', info: { reply: '_INBOX.js.1' } },
      { data: { q: 2 }, topic: 'svc.echo', info: {} },
    ]);
    await Promise.all([sub.close(), pub.close()]);
  });

  test('several handlers and overlapping patterns: each handler gets a message once', T, async () => {
    const c = client(broker.wsUrl);
    const a = inbox();
    const b = inbox();
    const w = inbox();
    const offA = await c.subscribe('x.y', a);
    const offB = await c.subscribe('x.y', b);
    await c.subscribe('x.>', w);
    await c.publish('x.y', 1);
    await Promise.all([a.wait(1), b.wait(1), w.wait(1)]);
    await offA();
    await c.publish('x.y', 2);
    await b.wait(2);
    await w.wait(2);
    assert.equal(a.got.length, 1);
    await offB();
    await offB(); // twice is harmless
    assert.deepEqual(c.patterns(), ['x.>']);
    await c.close();
  });

  test('broker errors reject with their code; the connection stays open', T, async () => {
    const c = client(broker.wsUrl);
    await assert.rejects(c.publish('a.*', 1), (e) => e instanceof GaleError && e.code === 'bad_topic');
    await assert.rejects(c.publish('a..b', 1), { code: 'bad_topic' });
    await assert.rejects(c.subscribe('a.>.b', () => {}), { code: 'bad_topic' });
    assert.deepEqual(c.patterns(), []);
    assert.equal(c.state, 'open');
    await c.publish('a.b', 'still fine');
    await c.close();
  });

  test('a publish larger than max_msg is refused locally with too_large', T, async () => {
    const c = client(broker.wsUrl);
    const hello = await opened(c);
    await assert.rejects(c.publish('big.one', 'x'.repeat(hello.max_msg)), { code: 'too_large' });
    assert.equal(c.state, 'open');
    await c.publish('big.one', 'small');
    await c.close();
  });

  test('a broker that does not answer makes requests time out', T, async () => {
    const b = await startBroker();
    const c = client(b.wsUrl, { timeout: 300, heartbeat: 0 });
    await opened(c);
    b.pause();
    try {
      const t0 = Date.now();
      await assert.rejects(c.publish('t.o', 1), { code: 'timeout' });
      await assert.rejects(c.subscribe('t.>', () => {}), { code: 'timeout' });
      assert.ok(Date.now() - t0 < 2000);
      assert.deepEqual(c.patterns(), []);
    } finally {
      b.resume();
    }
    await c.close();
    await b.stop();
  });

  test('the heartbeat notices a dead connection and reconnects', T, async () => {
    const b = await startBroker();
    const c = client(b.wsUrl, { timeout: 200, heartbeat: 200 });
    await opened(c);
    b.pause();
    await waitFor(() => c.events.includes('disconnect'), 5000, 'a disconnect');
    b.resume();
    await waitFor(() => c.state === 'open', 5000, 'the reconnect');
    await c.close();
    await b.stop();
  });

  test('JSON clients get a MessagePack bin as a Uint8Array', T, async () => {
    const j = client(broker.wsUrl);
    const m = client(broker.wsUrl, { encoding: 'msgpack', codec: msgpack });
    const box = inbox();
    await j.subscribe('bin.x', box);
    await opened(m);
    await m.publish('bin.x', new Uint8Array([104, 105, 0, 255]));
    await box.wait(1);
    assert.deepEqual(box.got[0].data, new Uint8Array([104, 105, 0, 255]));
    await Promise.all([j.close(), m.close()]);
  });

  test('MessagePack with an injected codec talks to JSON clients', T, async () => {
    const m = client(broker.wsUrl, { encoding: 'msgpack', codec: msgpack });
    const j = client(broker.wsUrl);
    const mbox = inbox();
    const jbox = inbox();
    await m.subscribe('mix.>', mbox);
    await j.subscribe('mix.>', jbox);
    await j.publish('mix.from-json', { a: 1, b: [true, 'x'] });
    await m.publish('mix.from-msgpack', { c: 2.5, d: null });
    await mbox.wait(2);
    await jbox.wait(2);
    assert.deepEqual(mbox.got[0], { topic: 'mix.from-json', data: { a: 1, b: [true, 'x'] } });
    assert.deepEqual(jbox.got[1], { topic: 'mix.from-msgpack', data: { c: 2.5, d: null } });
    await Promise.all([m.close(), j.close()]);
  });

  test('MessagePack without a codec option loads @msgpack/msgpack itself', T, async () => {
    // Where the npm package sits: next to node_modules/@msgpack/msgpack.
    const dir = path.join(SOURCE_DIR, 'clients/js/node_modules/.gale-test');
    mkdirSync(dir, { recursive: true });
    copyFileSync(path.join(WEB_ROOT, 'gale.js'), path.join(dir, 'gale.js'));
    const mod = await import(path.join(dir, 'gale.js'));
    const c = mod.connect(broker.wsUrl, { encoding: 'msgpack' });
    const box = inbox();
    await c.subscribe('auto.codec', box);
    await c.publish('auto.codec', { ok: true });
    await box.wait(1);
    assert.deepEqual(box.got[0].data, { ok: true });
    await c.close();
  });

  test('handler exceptions go to the error event and do not stop delivery', T, async () => {
    const c = client(broker.wsUrl);
    const box = inbox();
    await c.subscribe('boom', () => {
      throw new Error('handler bug');
    });
    await c.subscribe('boom', box);
    await c.publish('boom', 1);
    await box.wait(1);
    assert.equal(c.errors.length, 1);
    assert.match(c.errors[0].message, /handler bug/);
    await c.close();
  });
});

describe('reconnecting', () => {
  test('after a broker restart it reconnects with backoff, resubscribes and delivers queued publishes', T, async () => {
    const b = new Broker(await freePort());
    await b.start();
    const sub = client(b.wsUrl);
    const pub = client(b.wsUrl);
    const box = inbox();
    await sub.subscribe('news.>', box);
    await sub.subscribe('other', () => {});
    await opened(pub);
    await pub.publish('news.before', 1);
    await box.wait(1);

    const attempts = [];
    sub.on('connecting', (d) => attempts.push(d));
    await b.stop(); // the broker closes both with 1001
    await waitFor(() => sub.state === 'connecting' && pub.state === 'connecting', 5000, 'both to notice');
    await sleep(300); // a few failed attempts, with growing delays
    // Publishes while disconnected wait in the queue, in order.
    const queued = [pub.publish('news.queued', 2), pub.publish('news.queued', 3)];
    await b.start(); // same port
    await Promise.all(queued); // acked after the reconnect
    await waitFor(() => sub.state === 'open', 5000, 'the subscriber to reopen');
    await pub.publish('news.after', 4);
    // The queued ones may be published before sub is back: only the later one is sure.
    await waitFor(() => box.got.some((m) => m.data === 4), 5000, 'delivery after the restart');
    assert.deepEqual(sub.patterns().sort(), ['news.>', 'other']);
    assert.ok(sub.events.includes('disconnect'));
    assert.ok(attempts.length >= 2, `attempts: ${JSON.stringify(attempts)}`);
    assert.ok(attempts.every((a) => a.code === 1001 || a.code === 1006), JSON.stringify(attempts));
    assert.equal(attempts[0].code, 1001);
    // Exponential: later attempts wait longer (jitter halves at most).
    if (attempts.length >= 3) assert.ok(attempts[2].delay >= attempts[0].delay);
    await Promise.all([sub.close(), pub.close()]);
    await b.stop();
  });

  test('the publish queue is bounded; close() rejects what waits', T, async () => {
    const port = await freePort(); // nothing listens there
    const c = client(`ws://127.0.0.1:${port}/ws`, { maxQueue: 2, minDelay: 1000 });
    const p1 = c.publish('q.a', 1);
    const p2 = c.publish('q.a', 2);
    await assert.rejects(c.publish('q.a', 3), { code: 'queue_full' });
    const s = c.subscribe('q.>', () => {});
    const rejected = Promise.all([p1, p2, s].map((p) => assert.rejects(p, { code: 'closed' })));
    await c.close();
    await rejected;
    assert.equal(c.state, 'closed');
  });

  test('queued publishes time out when no broker comes back', T, async () => {
    const port = await freePort();
    const c = client(`ws://127.0.0.1:${port}/ws`, { timeout: 200 });
    await assert.rejects(c.publish('q.a', 1), { code: 'timeout' });
    assert.ok(c.events.filter((e) => e === 'connecting').length >= 2, 'it kept retrying');
    await c.close();
  });
});

// ---- history, recovery, idempotent publish: against the fake broker -----------------

/** A client of a FakeBroker: quick reconnects, no heartbeat. */
function fakeClient(broker, opts = {}) {
  return client('ws://fake.invalid/ws', {
    WebSocket: broker.WebSocket,
    minDelay: 5,
    maxDelay: 20,
    jitter: 0,
    heartbeat: 0,
    ...opts,
  });
}

/** A TcpProxy in front of the broker on port, closed by closeAll. */
async function proxyTo(port) {
  const proxy = await new TcpProxy(port).start();
  openThings.add(proxy);
  return proxy;
}

/** Drops c's connection while nothing can connect, runs fn (e.g. publishes by others), then
 * lets the client back. */
async function whileAway(broker, c, fn = async () => {}) {
  broker.down = true;
  broker.dropAll();
  await waitFor(() => c.state === 'connecting', 5000, 'the client to notice');
  await fn();
  broker.down = false;
}

const ENCODINGS = [
  ['json', {}],
  ['msgpack', { encoding: 'msgpack', codec: msgpack }],
];

describe('history and recovery (fake broker)', () => {
  afterEach(closeAll);
  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: positions come from the sub's ack and from every msg; handlers get {ep, off}`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      broker.publish('h.a', 'before');
      const c = fakeClient(broker, encOpts);
      const box = inbox();
      await c.subscribe('h.a', box);
      assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 1 }, 'from the ack');
      broker.publish('h.a', 'one');
      await box.wait(1);
      assert.deepEqual(box.info, [{ ep: 'e1', off: 2 }]);
      assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 2 });
      // Positions are kept for subscribed concrete topics only; no history: no position.
      const wild = inbox();
      await c.subscribe('h.*', wild);
      const plain = inbox();
      await c.subscribe('plain', plain);
      broker.publish('h.b', 'b');
      broker.publish('plain', 'p');
      await wild.wait(1);
      await plain.wait(1);
      assert.deepEqual(wild.info[0], { ep: 'e2', off: 1 });
      assert.deepEqual(plain.info[0], {});
      assert.equal(c.position('h.b'), null);
      assert.equal(c.position('h.*'), null);
      assert.equal(c.position('plain'), null);
      assert.equal(c.position('nothing'), null);
      await c.close();
    });

    test(`${enc}: after a lost connection it subscribes again with since; onRecover says recovered`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      const c = fakeClient(broker, encOpts);
      const log = [];
      const box = inbox();
      const handler = (data, topic, meta) => {
        box(data, topic, meta);
        log.push(`msg ${data}`);
      };
      const recoveries = [];
      const events = [];
      c.on('recover', (r) => events.push(r));
      await c.subscribe('h.a', handler, {
        onRecover(r) {
          recoveries.push(r);
          log.push('recover');
        },
      });
      assert.equal(broker.requests('sub', 'h.a')[0].since, undefined, 'a fresh subscribe has no since');
      broker.publish('h.a', 1);
      broker.publish('h.a', 2);
      await box.wait(2);
      assert.deepEqual(recoveries, [], 'no recovery on the first subscribe');
      await whileAway(broker, c, async () => {
        broker.publish('h.a', 3);
        broker.publish('h.a', 4);
      });
      await waitFor(() => recoveries.length === 1 && c.state === 'open', 5000, 'the recovery');
      const subs = broker.requests('sub', 'h.a');
      assert.equal(subs.length, 2);
      assert.deepEqual(subs[1].since, { ep: 'e1', off: 2 });
      assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: true, ep: 'e1', off: 4 }]);
      assert.deepEqual(events, recoveries, "the client's 'recover' event");
      assert.deepEqual(log, ['msg 1', 'msg 2', 'msg 3', 'msg 4', 'recover'], 'replayed, then reported');
      assert.deepEqual(box.info.map((i) => i.off), [1, 2, 3, 4]);
      assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 4 });
      // Live again: and the next loss resumes from the new position.
      broker.publish('h.a', 5);
      await box.wait(5);
      await whileAway(broker, c);
      await waitFor(() => recoveries.length === 2, 5000, 'the second recovery');
      assert.deepEqual(broker.requests('sub', 'h.a')[2].since, { ep: 'e1', off: 5 });
      assert.deepEqual(recoveries[1], { topic: 'h.a', recovered: true, ep: 'e1', off: 5 });
      assert.deepEqual(box.data(), [1, 2, 3, 4, 5]);
      await c.close();
    });
  }

  test('recovered false after a broker restart (new epoch): the position moves to the new one', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('h.a', box, { onRecover: (r) => recoveries.push(r) });
    broker.publish('h.a', 1);
    broker.publish('h.a', 2);
    broker.publish('h.a', 3);
    await box.wait(3);
    broker.restart(); // e1 is gone; the stream starts again as e2, empty
    await waitFor(() => recoveries.length === 1, 5000, 'the recovery report');
    assert.deepEqual(broker.requests('sub', 'h.a')[1].since, { ep: 'e1', off: 3 });
    assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: false, ep: 'e2', off: 0 }]);
    assert.deepEqual(c.position('h.a'), { ep: 'e2', off: 0 });
    // Offsets of the new epoch start at 1 again: they are not taken for duplicates.
    broker.publish('h.a', 'new 1');
    await box.wait(4);
    assert.deepEqual(box.info[3], { ep: 'e2', off: 1 });
    await c.close();
  });

  test('recovered false when the missed messages are no longer held: nothing is replayed', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 3 } });
    const c = fakeClient(broker);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('h.a', box, { onRecover: (r) => recoveries.push(r) });
    broker.publish('h.a', 1);
    await box.wait(1);
    await whileAway(broker, c, async () => {
      for (let i = 2; i <= 6; i++) broker.publish('h.a', i); // 2 and 3 fall out of the 3 kept
    });
    await waitFor(() => recoveries.length === 1, 5000, 'the recovery report');
    assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: false, ep: 'e1', off: 6 }]);
    await c.ping();
    assert.deepEqual(box.data(), [1]);
    assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 6 });
    broker.publish('h.a', 7);
    await box.wait(2);
    assert.deepEqual(box.data(), [1, 7]);
    await c.close();
  });

  test('patterns and topics without history: after a reconnect recovered is false, no since is sent', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker);
    const recoveries = [];
    await c.subscribe('h.*', () => {}, { onRecover: (r) => recoveries.push(r) });
    await c.subscribe('plain.x', () => {}, { onRecover: (r) => recoveries.push(r) });
    await c.subscribe('quiet', () => {}); // no onRecover: only the event
    const events = [];
    c.on('recover', (r) => events.push(r));
    await whileAway(broker, c);
    await waitFor(() => recoveries.length === 2 && events.length === 3, 5000, 'the recovery reports');
    for (const t of ['h.*', 'plain.x', 'quiet']) {
      const subs = broker.requests('sub', t);
      assert.equal(subs.length, 2, t);
      assert.equal(subs[1].since, undefined, t);
    }
    assert.deepEqual(recoveries.sort((a, b) => a.topic.localeCompare(b.topic)), [
      { topic: 'h.*', recovered: false },
      { topic: 'plain.x', recovered: false },
    ]);
    assert.deepEqual(events.map((e) => e.topic).sort(), ['h.*', 'plain.x', 'quiet']);
    await c.close();
  });

  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: subscribe with an initial since replays what came after it before resolving`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      for (let i = 1; i <= 5; i++) broker.publish('h.a', i);
      const c = fakeClient(broker, encOpts);
      const box = inbox();
      const recoveries = [];
      const off = await c.subscribe('h.a', box, {
        since: { ep: 'e1', off: 2 },
        onRecover: (r) => recoveries.push({ ...r, delivered: box.got.length }),
      });
      assert.equal(typeof off, 'function');
      assert.deepEqual(broker.requests('sub', 'h.a')[0].since, { ep: 'e1', off: 2 });
      assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: true, ep: 'e1', off: 5, delivered: 3 }]);
      assert.deepEqual(box.data(), [3, 4, 5]);
      assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 5 });
      // A second handler on the same topic shares its subscription: its since is ignored.
      const second = inbox();
      await c.subscribe('h.a', second, { since: { ep: 'e1', off: 0 } });
      assert.equal(broker.requests('sub', 'h.a').length, 1);
      assert.equal(second.got.length, 0);
      // A position of another epoch cannot be resumed.
      const stale = inbox();
      const r2 = [];
      await c.subscribe('h.b', stale, { since: { ep: 'gone', off: 7 }, onRecover: (r) => r2.push(r) });
      assert.deepEqual(r2, [{ topic: 'h.b', recovered: false, ep: 'e2', off: 0 }]);
      assert.deepEqual(c.position('h.b'), { ep: 'e2', off: 0 });
      await c.close();
    });
  }

  test('a since past the top of its epoch: recovered false, and the position goes back to the top', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    for (let i = 1; i <= 3; i++) broker.publish('h.a', i);
    const c = fakeClient(broker);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('h.a', box, { since: { ep: 'e1', off: 10 }, onRecover: (r) => recoveries.push(r) });
    assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: false, ep: 'e1', off: 3 }]);
    assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 3 });
    broker.publish('h.a', 4); // off 4: below the 10 given, but a new message
    await box.wait(1);
    assert.deepEqual(box.data(), [4]);
    await c.close();
  });

  test('a msg that overtakes the ack of its sub keeps the position ahead of the ack', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    broker.publish('h.a', 1);
    // The broker registers the sub, reads the top (1), a publish slips in (2), then the ack.
    broker.onRequest = (conn, msg) => {
      if (msg.op !== 'sub') return undefined;
      conn.subs.add(msg.topic);
      const s = broker.stream(msg.topic);
      const ack = { op: 'ack', id: msg.id, ep: s.ep, off: s.off };
      if (msg.since) ack.recovered = false; // e.g. its window passed
      broker.publish(msg.topic, `racer ${s.off + 1}`);
      conn.send(ack);
      return 'ignore';
    };
    const c = fakeClient(broker);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('h.a', box, { onRecover: (r) => recoveries.push(r) });
    assert.deepEqual(box.data(), ['racer 2']);
    assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 2 }, 'not back to the ack at 1');
    // recovered false, yet messages of this epoch delivered since the sub are kept too.
    await whileAway(broker, c);
    await waitFor(() => recoveries.length === 1, 5000, 'the recovery report');
    assert.deepEqual(broker.requests('sub', 'h.a')[1].since, { ep: 'e1', off: 2 });
    assert.deepEqual(recoveries, [{ topic: 'h.a', recovered: false, ep: 'e1', off: 2 }]);
    assert.deepEqual(c.position('h.a'), { ep: 'e1', off: 3 });
    // Resumed from 3: nothing missed, nothing twice.
    broker.onRequest = null;
    await whileAway(broker, c);
    await waitFor(() => recoveries.length === 2, 5000, 'the second recovery');
    assert.deepEqual(broker.requests('sub', 'h.a')[2].since, { ep: 'e1', off: 3 });
    assert.deepEqual(recoveries[1], { topic: 'h.a', recovered: true, ep: 'e1', off: 3 });
    assert.deepEqual(box.data(), ['racer 2', 'racer 3']);
    await c.close();
  });

  test('since and onRecover are checked before anything is sent', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker);
    await opened(c);
    await assert.rejects(c.subscribe('h.*', () => {}, { since: { ep: 'e1', off: 0 } }), TypeError);
    await assert.rejects(c.subscribe('h.>', () => {}, { since: { ep: 'e1', off: 0 } }), TypeError);
    for (const since of [{ ep: 1, off: 0 }, { ep: 'e1' }, { ep: 'e1', off: -1 }, { ep: 'e1', off: 1.5 }, 'e1:3']) {
      await assert.rejects(c.subscribe('h.a', () => {}, { since }), TypeError, JSON.stringify(since));
    }
    await assert.rejects(c.subscribe('h.a', () => {}, { onRecover: 'yes' }), TypeError);
    assert.equal(broker.requests('sub').length, 0);
    assert.deepEqual(c.patterns(), []);
    await c.close();
  });

  test('a msg not past the last offset seen of its epoch is dropped as a duplicate', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker);
    const box = inbox();
    const wild = inbox(); // a pattern matching the same topic: the duplicate is dropped for it too
    await c.subscribe('h.a', box);
    await c.subscribe('h.>', wild);
    broker.publish('h.a', 1);
    broker.publish('h.a', 2);
    await box.wait(2);
    const conn = [...broker.conns][0];
    conn.send({ op: 'msg', topic: 'h.a', ep: 'e1', off: 2, data: 'dup of 2' });
    conn.send({ op: 'msg', topic: 'h.a', ep: 'e1', off: 1, data: 'dup of 1' });
    conn.send({ op: 'msg', topic: 'h.a', ep: 'e1', off: 3, data: 3 });
    conn.send({ op: 'msg', topic: 'h.a', ep: 'e1', off: 3, data: 'dup of 3' });
    conn.send({ op: 'msg', topic: 'h.a', ep: 'e9', off: 1, data: 'another epoch' });
    conn.send({ op: 'msg', topic: 'h.a', data: 'no position' });
    await box.wait(5);
    await c.ping();
    assert.deepEqual(box.data(), [1, 2, 3, 'another epoch', 'no position']);
    assert.deepEqual(wild.data(), box.data());
    assert.deepEqual(c.position('h.a'), { ep: 'e9', off: 1 });
    await c.close();
    // A faulty replay that resends messages the client has: they are dropped.
    const broker2 = new FakeBroker({ history: { 'h.>': 100 } });
    broker2.replayOverlap = 3;
    const c2 = fakeClient(broker2);
    const box2 = inbox();
    await c2.subscribe('h.a', box2);
    for (let i = 1; i <= 4; i++) broker2.publish('h.a', i);
    await box2.wait(4);
    await whileAway(broker2, c2, async () => broker2.publish('h.a', 5));
    await box2.wait(5);
    await waitFor(() => c2.state === 'open', 5000, 'the reconnect');
    await c2.ping();
    assert.ok(broker2.sent.filter((s) => s.msg.op === 'msg').length >= 8, 'the fake did resend old ones');
    assert.deepEqual(box2.data(), [1, 2, 3, 4, 5]);
    await c2.close();
  });

  test('an exception in onRecover goes to the error event', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker);
    const box = inbox();
    await c.subscribe('h.a', box, {
      since: { ep: 'e1', off: 0 },
      onRecover() {
        throw new Error('onRecover bug');
      },
    });
    assert.equal(c.errors.length, 1);
    assert.match(c.errors[0].message, /onRecover bug/);
    await c.close();
  });
});

describe('idempotent publish and history (fake broker)', () => {
  afterEach(closeAll);
  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: publishes carry a unique mid; the ack's ep, off, dup and mid resolve the promise`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      const c = fakeClient(broker, encOpts);
      const box = inbox();
      await c.subscribe('h.>', box);
      const a1 = await c.publish('h.a', 1);
      const a2 = await c.publish('h.a', 2);
      const a3 = await c.publish('plain', 3);
      const pubs = broker.requests('pub');
      assert.equal(pubs.length, 3);
      const mids = pubs.map((p) => p.mid);
      assert.equal(new Set(mids).size, 3, `distinct mids: ${mids}`);
      for (const m of mids) assert.ok(typeof m === 'string' && m.length >= 1 && m.length <= 64, m);
      const prefix = (m) => m.slice(0, m.lastIndexOf('.'));
      assert.ok(mids.every((m) => prefix(m) === prefix(mids[0])), 'one prefix per client');
      assert.ok(prefix(mids[0]).length >= 16, 'a random prefix');
      assert.deepEqual({ ...a1, id: 0 }, { op: 'ack', id: 0, ep: 'e1', off: 1, mid: mids[0] });
      assert.deepEqual({ ...a2, id: 0 }, { op: 'ack', id: 0, ep: 'e1', off: 2, mid: mids[1] });
      assert.deepEqual({ ...a3, id: 0 }, { op: 'ack', id: 0, mid: mids[2] }, 'no ep/off without history');
      // Another client draws another prefix.
      const c2 = fakeClient(broker, encOpts);
      await c2.publish('h.b', 0);
      assert.notEqual(prefix(broker.requests('pub').at(-1).mid), prefix(mids[0]));
      // The caller's own mid: a second publish with it is a duplicate, not delivered again.
      const d1 = await c.publish('h.a', 'order', { mid: 'order-42' });
      const d2 = await c.publish('h.a', 'order again', { mid: 'order-42' });
      assert.equal(d1.mid, 'order-42');
      assert.equal(d1.dup, undefined);
      assert.equal(d2.dup, true);
      assert.equal(d2.off, d1.off, "a duplicate's off is the original's");
      await box.wait(4);
      await c.ping();
      assert.deepEqual(box.data(), [1, 2, 0, 'order']);
      assert.deepEqual(broker.requests('pub').slice(-2).map((p) => p.mid), ['order-42', 'order-42']);
      await Promise.all([c.close(), c2.close()]);
    });
  }

  test('a mid must be a string of 1 to 64 bytes; idempotent: false sends none', T, async () => {
    const broker = new FakeBroker();
    const c = fakeClient(broker);
    await opened(c);
    for (const mid of ['', 'x'.repeat(65), 'é'.repeat(33), 42, null]) {
      await assert.rejects(c.publish('t', 1, { mid }), TypeError, JSON.stringify(mid));
    }
    assert.equal(broker.requests('pub').length, 0);
    await c.publish('t', 1, { mid: 'é'.repeat(32) }); // 64 bytes
    assert.equal(broker.requests('pub')[0].mid, 'é'.repeat(32));
    const plain = fakeClient(broker, { idempotent: false });
    const ack = await plain.publish('t', 2);
    assert.equal(ack.mid, undefined);
    assert.ok(!('mid' in broker.requests('pub')[1]));
    await plain.publish('t', 3, { mid: 'explicit' }); // an explicit one still goes
    assert.equal(broker.requests('pub')[2].mid, 'explicit');
    await Promise.all([c.close(), plain.close()]);
  });

  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: a publish whose ack was lost goes again with its mid after the reconnect, once`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      const sub = fakeClient(broker);
      const box = inbox();
      await sub.subscribe('h.a', box);
      const pub = fakeClient(broker, encOpts);
      await opened(pub);
      let lost = 0;
      broker.onRequest = (conn, msg) => {
        if (msg.op === 'pub' && msg.data === 'lost' && lost++ === 0) {
          broker.down = true; // stay away long enough to queue another publish
          return 'lose-ack'; // delivered, then the connection drops before the ack
        }
        return undefined;
      };
      const p1 = pub.publish('h.a', 'lost');
      p1.catch(() => {}); // awaited below: a rejection fails the test, not the process
      await waitFor(() => pub.state === 'connecting', 5000, 'the lost connection');
      const p2 = pub.publish('h.a', 'queued');
      broker.down = false;
      const [ack1, ack2] = await Promise.all([p1, p2]);
      const pubs = broker.requests('pub');
      assert.deepEqual(pubs.map((p) => p.data), ['lost', 'lost', 'queued'], 'the lost one first, then the queue');
      assert.equal(pubs[1].mid, pubs[0].mid, 'sent again with the same mid');
      assert.notEqual(pubs[1].id, pubs[0].id);
      assert.equal(ack1.dup, true);
      assert.equal(ack1.mid, pubs[0].mid);
      assert.equal(ack1.off, 1);
      assert.equal(ack2.dup, undefined);
      assert.equal(ack2.off, 2);
      await box.wait(2);
      await sub.ping();
      assert.deepEqual(box.data(), ['lost', 'queued'], 'exactly once');
      assert.ok(pub.events.includes('disconnect'));
      assert.deepEqual(pub.errors, []);
      await Promise.all([sub.close(), pub.close()]);
    });
  }

  test('a publish in flight when the connection drops goes again ahead of those sent while closing', T, async () => {
    const broker = new FakeBroker();
    const c = fakeClient(broker);
    await opened(c);
    broker.dropDelay = 40; // the socket stays CLOSING for 40 ms
    let late;
    broker.onRequest = (conn, msg) => {
      if (msg.op !== 'pub' || msg.data !== 'A' || late) return undefined;
      // Published while the socket is closing, before the client knows: it waits too.
      setTimeout(() => {
        late = c.publish('t', 'B');
      }, 5);
      return 'lose-ack';
    };
    const a = c.publish('t', 'A');
    a.catch(() => {}); // awaited below
    await waitFor(() => late, 5000, 'the publish while closing');
    assert.equal(c.state, 'open', 'the close event has not come yet');
    const [ackA, ackB] = await Promise.all([a, late]);
    assert.deepEqual(broker.requests('pub').map((p) => p.data), ['A', 'A', 'B']);
    assert.equal(ackA.dup, true);
    assert.equal(ackB.dup, undefined);
    await c.close();
  });

  test('without a mid, a publish in flight when the connection drops rejects with disconnected', T, async () => {
    const broker = new FakeBroker();
    const c = fakeClient(broker, { idempotent: false });
    await opened(c);
    broker.onRequest = (conn, msg) => (msg.op === 'pub' ? 'lose-ack' : undefined);
    await assert.rejects(c.publish('t', 1), { code: 'disconnected' });
    broker.onRequest = null;
    await waitFor(() => c.state === 'open', 5000, 'the reconnect');
    assert.equal(broker.requests('pub').length, 1, 'not sent again');
    await c.close();
  });

  test('a resent publish still waiting when the timeout passes rejects with its mid in err.request', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    const c = fakeClient(broker, { timeout: 300 });
    await opened(c);
    broker.onRequest = (conn, msg) => {
      if (msg.op !== 'pub') return undefined;
      broker.down = true;
      return 'lose-ack';
    };
    const err = await c.publish('h.a', 'maybe').then(
      () => assert.fail('resolved'),
      (e) => e,
    );
    assert.equal(err.code, 'timeout');
    const mid = broker.requests('pub')[0].mid;
    assert.equal(err.request.mid, mid);
    // The application retries with that mid once the broker is back: no second delivery.
    broker.onRequest = null;
    broker.down = false;
    const ack = await c.publish('h.a', 'maybe', { mid: err.request.mid });
    assert.equal(ack.dup, true);
    assert.equal(broker.streams.get('h.a').off, 1);
    await c.close();
  });

  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: history() resolves with {ep, off, messages} oldest first, binary as Uint8Array`, T, async () => {
      const broker = new FakeBroker({ history: { 'h.>': 100 } });
      const m = fakeClient(broker, { encoding: 'msgpack', codec: msgpack });
      await m.publish('h.a', { n: 1 });
      await m.publish('h.a', 'two');
      await m.publish('h.a', new Uint8Array([0, 1, 255]));
      const c = fakeClient(broker, encOpts);
      const h = await c.history('h.a', { limit: 2 });
      assert.deepEqual(h, {
        ep: 'e1',
        off: 3,
        messages: [
          { off: 2, data: 'two' },
          { off: 3, data: new Uint8Array([0, 1, 255]) },
        ],
      });
      assert.ok(h.messages[1].data instanceof Uint8Array);
      const hist = broker.requests('hist').at(-1);
      assert.deepEqual(hist, { op: 'hist', topic: 'h.a', limit: 2, id: hist.id });
      const all = await c.history('h.a');
      assert.ok(!('limit' in broker.requests('hist').at(-1)), 'no limit: the broker default');
      assert.deepEqual(all.messages.map((x) => x.off), [1, 2, 3]);
      assert.deepEqual(all.messages[0].data, { n: 1 });
      assert.deepEqual(await c.history('h.a', { limit: 0 }), { ep: 'e1', off: 3, messages: [] });
      assert.deepEqual(await c.history('plain'), { ep: undefined, off: 0, messages: [] });
      await assert.rejects(c.history('h.*'), { code: 'bad_topic' });
      for (const limit of [-1, 1.5, '2']) await assert.rejects(c.history('h.a', { limit }), TypeError);
      await Promise.all([m.close(), c.close()]);
    });
  }

  test('history() waits for the connection and is asked again when the answer is lost', T, async () => {
    const broker = new FakeBroker({ history: { 'h.>': 100 } });
    broker.publish('h.a', 'x');
    broker.down = true;
    const c = fakeClient(broker);
    const early = c.history('h.a'); // not connected yet: queued
    await sleep(30);
    let lost = 0;
    broker.onRequest = (conn, msg) => (msg.op === 'hist' && lost++ === 0 ? 'lose-ack' : undefined);
    broker.down = false;
    const h = await early;
    assert.deepEqual(h.messages, [{ off: 1, data: 'x' }]);
    assert.equal(broker.requests('hist').length, 2, 'asked again after the reconnect');
    assert.ok(c.events.includes('disconnect'));
    await c.close();
    await assert.rejects(c.history('h.a'), { code: 'closed' });
  });
});

// ---- presence: against the fake broker ------------------------------------------------

/** Records what a subscription with presence reports: joins, leaves (conn and info) and
 * the states passed to onPresence. Spread into subscribe()'s options. */
function watcher() {
  const w = { joins: [], leaves: [], states: [] };
  w.opts = {
    presence: true,
    onJoin: (m, topic) => w.joins.push({ ...m, topic }),
    onLeave: (m, topic) => w.leaves.push({ ...m, topic }),
    onPresence: (s) => w.states.push(s),
  };
  w.last = () => w.states.at(-1);
  w.conns = () => w.last().members.map((m) => m.conn).sort();
  return w;
}

const byConn = (a, b) => (a.conn < b.conn ? -1 : a.conn > b.conn ? 1 : 0);
const sorted = (members) => [...members].sort(byConn);

/** The broker-side connection of a client. */
const connOf = (broker, c) => [...broker.conns].find((x) => x.id === c.conn);

describe('presence (fake broker)', () => {
  afterEach(closeAll);
  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: presence() asks the broker; conn ids are strings; errors reject`, T, async () => {
      const broker = new FakeBroker({ presence: ['room.*'] });
      const a = fakeClient(broker, encOpts);
      const b = fakeClient(broker, encOpts);
      assert.equal(a.conn, null, 'no conn before the hello');
      await Promise.all([opened(a), opened(b)]);
      assert.match(a.conn, /^[0-9a-f]{16}-\d+$/);
      assert.equal(a.conn, a.hello.conn);
      assert.notEqual(a.conn, b.conn);
      // b is a member with info, without presence events: its sub carries info only.
      await b.subscribe('room.a', () => {}, { info: { nick: 'bob', tags: ['x'] } });
      assert.deepEqual(
        broker.requests('sub', 'room.a').map(({ id, ...r }) => r),
        [{ op: 'sub', topic: 'room.a', info: { nick: 'bob', tags: ['x'] } }],
      );
      const p = await a.presence('room.a');
      assert.deepEqual(p, { count: 1, members: [{ conn: b.conn, info: { nick: 'bob', tags: ['x'] } }] });
      const req = broker.requests('presence').at(-1);
      assert.deepEqual(Object.keys(req).sort(), ['id', 'op', 'topic']);
      assert.equal(req.topic, 'room.a');
      assert.deepEqual(await a.presence('room.empty'), { count: 0, members: [] });
      await assert.rejects(a.presence('room.*'), { code: 'bad_topic' });
      await assert.rejects(a.presence('other'), { code: 'bad_request' });
      await assert.rejects(a.presence(42), TypeError);
      // While not connected it waits in the queue; an answer lost is asked again.
      broker.down = true;
      connOf(broker, a).drop();
      await waitFor(() => a.state === 'connecting', 5000, 'a to notice');
      const later = a.presence('room.a');
      let lost = 0;
      broker.onRequest = (conn, msg) => (msg.op === 'presence' && lost++ === 0 ? 'lose-ack' : undefined);
      broker.down = false;
      assert.deepEqual(await later, { count: 1, members: [{ conn: b.conn, info: { nick: 'bob', tags: ['x'] } }] });
      assert.equal(lost, 2, 'asked again after the answer was lost');
      await Promise.all([a.close(), b.close()]);
      await assert.rejects(a.presence('room.a'), { code: 'closed' });
    });

    test(`${enc}: subscribe with presence keeps the member list; join and leave are applied`, T, async () => {
      const broker = new FakeBroker({ presence: ['room.*'] });
      const a = fakeClient(broker, encOpts);
      const b = fakeClient(broker, encOpts);
      const c = fakeClient(broker, encOpts);
      await Promise.all([opened(b), opened(c)]);
      await b.subscribe('room.a', () => {}, { info: { nick: 'bob' } });
      const w = watcher();
      const events = [];
      a.on('join', (m, topic) => events.push(['join', m.conn, topic]));
      a.on('leave', (m, topic) => events.push(['leave', m.conn, topic]));
      a.on('presence', (s) => events.push(['presence', s.count]));
      const box = inbox();
      await a.subscribe('room.a', box, { ...w.opts, info: { nick: 'ann' } });
      const sub = broker.requests('sub', 'room.a').at(-1);
      assert.deepEqual({ ...sub, id: 0 }, { op: 'sub', topic: 'room.a', id: 0, presence: true, info: { nick: 'ann' } });
      // The list is read before subscribe() resolves.
      assert.equal(broker.requests('presence', 'room.a').length, 1);
      assert.equal(w.states.length, 1);
      const ann = { conn: a.conn, info: { nick: 'ann' } };
      const bob = { conn: b.conn, info: { nick: 'bob' } };
      assert.deepEqual({ ...w.last(), members: sorted(w.last().members) },
        { topic: 'room.a', count: 2, members: sorted([ann, bob]), exact: true });
      assert.deepEqual(a.members('room.a'), w.last());
      assert.deepEqual(w.joins, [], 'the first list reports no joins');
      // c joins without info, then b leaves (closes), then c unsubscribes.
      const offC = await c.subscribe('room.a', () => {});
      await waitFor(() => w.joins.length === 1, 5000, 'the join');
      assert.deepEqual(w.joins, [{ conn: c.conn, topic: 'room.a' }]);
      assert.equal(a.members('room.a').count, 3);
      await b.close();
      await waitFor(() => w.leaves.length === 1, 5000, 'the leave on close');
      assert.deepEqual(w.leaves, [{ ...bob, topic: 'room.a' }]);
      await offC();
      await waitFor(() => w.leaves.length === 2, 5000, 'the leave on unsub');
      assert.deepEqual(a.members('room.a'), { topic: 'room.a', count: 1, members: [ann], exact: true });
      assert.deepEqual(events, [['presence', 2], ['join', c.conn, 'room.a'], ['presence', 3],
        ['leave', b.conn, 'room.a'], ['presence', 2], ['leave', c.conn, 'room.a'], ['presence', 1]]);
      assert.deepEqual(w.states.map((s) => s.count), [2, 3, 2, 1]);
      // Messages still reach the handler; members() is null for topics without presence.
      broker.publish('room.a', 'hi');
      await box.wait(1);
      assert.equal(a.members('room.b'), null);
      assert.deepEqual(a.errors, []);
      await Promise.all([a.close(), c.close()]);
      assert.equal(a.members('room.a'), null, 'closed: no subscriptions');
    });

    test(`${enc}: after a reconnect it subscribes again with presence and info, reads the list, reports the differences`, T, async () => {
      const broker = new FakeBroker({ presence: ['room.*'], history: { 'room.*': 10 } });
      const a = fakeClient(broker, encOpts);
      const b = fakeClient(broker, encOpts);
      const d = fakeClient(broker, encOpts);
      await Promise.all([opened(b), opened(d)]);
      await b.subscribe('room.a', () => {}, { info: { nick: 'bob' } });
      const w = watcher();
      const recoveries = [];
      await a.subscribe('room.a', () => {}, { ...w.opts, info: { nick: 'ann' }, onRecover: (r) => recoveries.push(r) });
      const oldConn = a.conn;
      // a is cut off; meanwhile b leaves and d comes.
      broker.down = true;
      connOf(broker, a).drop();
      await waitFor(() => a.state === 'connecting', 5000, 'a to notice');
      assert.equal(a.members('room.a').exact, false, 'not followed while disconnected');
      await b.close();
      await d.subscribe('room.a', () => {}, { info: { nick: 'dan' } });
      broker.down = false;
      await waitFor(() => recoveries.length === 1 && w.states.length === 2, 5000, 'the resubscription and the new list');
      assert.notEqual(a.conn, oldConn);
      const subs = broker.requests('sub', 'room.a').filter((s) => s.info?.nick === 'ann');
      assert.equal(subs.length, 2);
      assert.equal(subs[1].presence, true);
      assert.deepEqual(subs[1].info, { nick: 'ann' });
      assert.ok(subs[1].since, 'and since, for the history');
      assert.equal(broker.requests('presence', 'room.a').length, 2, 'the list is read again');
      assert.deepEqual(recoveries.map((r) => r.recovered), [true]);
      // Differences: b left, d came; a's own old and new connections are not reported.
      assert.deepEqual(w.leaves, [{ conn: b.conn, info: { nick: 'bob' }, topic: 'room.a' }]);
      assert.deepEqual(w.joins, [{ conn: d.conn, info: { nick: 'dan' }, topic: 'room.a' }]);
      assert.deepEqual(sorted(a.members('room.a').members),
        sorted([{ conn: a.conn, info: { nick: 'ann' } }, { conn: d.conn, info: { nick: 'dan' } }]));
      assert.equal(a.members('room.a').exact, true);
      // Live again: events are applied.
      await d.close();
      await waitFor(() => w.leaves.length === 2, 5000, "d's leave");
      assert.deepEqual(a.members('room.a').members, [{ conn: a.conn, info: { nick: 'ann' } }]);
      await a.close();
    });
  }

  test('a join of a conn listed and a leave of one not listed change nothing', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker);
    const b = fakeClient(broker);
    await opened(b);
    await b.subscribe('room.a', () => {}, { info: { nick: 'bob' } });
    const w = watcher();
    await a.subscribe('room.a', () => {}, w.opts);
    const say = (msg) => connOf(broker, a).send({ topic: 'room.a', ...msg });
    say({ op: 'join', conn: b.conn, info: { nick: 'bob' } }); // listed already
    say({ op: 'leave', conn: 'ffffffffffffffff-9' }); // not listed
    say({ op: 'leave', conn: 'ffffffffffffffff-9', info: { nick: 'ghost' } });
    say({ op: 'join', conn: 'ffffffffffffffff-7', user: 'u7' }); // new: applied
    say({ op: 'join', conn: 'ffffffffffffffff-7', user: 'u7' }); // twice: once
    say({ op: 'join', topic: 'room.other', conn: 'ffffffffffffffff-8' }); // another topic
    await a.ping();
    assert.deepEqual(w.joins, [{ conn: 'ffffffffffffffff-7', user: 'u7', topic: 'room.a' }]);
    assert.deepEqual(w.leaves, []);
    assert.equal(a.members('room.a').count, 3);
    say({ op: 'leave', conn: 'ffffffffffffffff-7', user: 'u7' });
    say({ op: 'leave', conn: 'ffffffffffffffff-7', user: 'u7' }); // once
    await a.ping();
    assert.deepEqual(w.leaves, [{ conn: 'ffffffffffffffff-7', user: 'u7', topic: 'room.a' }]);
    assert.deepEqual(a.members('room.a').members.map((m) => m.conn).sort(), [a.conn, b.conn].sort());
    assert.equal(a.members('room.a').count, 2);
    assert.deepEqual(w.states.map((s) => s.count), [2, 3, 2], 'onPresence only for changes');
    await Promise.all([a.close(), b.close()]);
  });

  test('events that come before the list are applied to it once it is read', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker);
    let read;
    broker.onRequest = (conn, msg) => {
      if (msg.op !== 'presence') return undefined;
      read = { conn, id: msg.id };
      return 'ignore'; // answered below, late, with a list older than the events
    };
    const w = watcher();
    let resolved = false;
    const subscribed = a.subscribe('room.a', () => {}, w.opts).then((off) => {
      resolved = true;
      return off;
    });
    await waitFor(() => read, 5000, 'the presence request');
    const x = 'ffffffffffffffff-1';
    const y = 'ffffffffffffffff-2';
    const z = 'ffffffffffffffff-3';
    read.conn.send({ op: 'join', topic: 'room.a', conn: x }); // not in the list (it came after)
    read.conn.send({ op: 'leave', topic: 'room.a', conn: y }); // in the list (it left after)
    read.conn.send({ op: 'join', topic: 'room.a', conn: z }); // in the list already
    await a.ping();
    assert.equal(resolved, false, 'subscribe() waits for the list');
    assert.equal(w.states.length, 0);
    read.conn.send({ op: 'presence', id: read.id, topic: 'room.a', count: 3,
      members: [{ conn: a.conn }, { conn: y }, { conn: z }] });
    await subscribed;
    assert.deepEqual(w.states.length, 1);
    assert.deepEqual(w.conns(), [a.conn, x, z].sort());
    assert.equal(w.last().count, 3);
    assert.equal(w.last().exact, true);
    assert.deepEqual([w.joins, w.leaves], [[], []], 'the first list reports no changes');
    await a.close();
  });

  test('count-only messages: count and exact: false, then the list is read again (debounced)', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'], presenceEventsMax: 2 });
    const delay = 400;
    const a = fakeClient(broker, { presenceDelay: delay });
    const others = [fakeClient(broker), fakeClient(broker), fakeClient(broker)];
    const w = watcher();
    await a.subscribe('room.a', () => {}, w.opts);
    await others[0].subscribe('room.a', () => {}); // 2 members: an event
    await waitFor(() => w.joins.length === 1, 5000, 'the join');
    await others[1].subscribe('room.a', () => {}); // 3 > presenceEventsMax: no event
    await others[2].subscribe('room.a', () => {});
    await a.ping();
    assert.equal(w.joins.length, 1);
    const reads = broker.requests('presence').length;
    // Several count-only messages in a row: one read, presenceDelay after the last.
    broker.presenceCount('room.a');
    await waitFor(() => w.last().count === 4, 5000, 'the count');
    assert.equal(w.last().exact, false);
    assert.equal(w.last().members.length, 2, 'the list is not followed any more');
    assert.deepEqual(a.members('room.a').exact, false);
    broker.presenceCount('room.a');
    await sleep(delay / 4);
    broker.presenceCount('room.a');
    await sleep(delay / 4);
    assert.equal(broker.requests('presence').length, reads, 'not read while they come');
    await waitFor(() => broker.requests('presence').length === reads + 1, 5000, 'the read');
    await waitFor(() => w.last().exact, 5000, 'the list read again');
    await sleep(delay * 2);
    assert.equal(broker.requests('presence').length, reads + 1, 'read once');
    assert.equal(w.last().count, 4);
    assert.deepEqual(w.conns(), [a.conn, ...others.map((o) => o.conn)].sort());
    // Both lists were complete: the members found are reported as joins.
    assert.deepEqual(w.joins.map((j) => j.conn), others.map((o) => o.conn));
    // A list the broker capped (count > members) is not exact, and reports no differences.
    broker.presenceListMax = 2;
    await others[2].close();
    broker.presenceCount('room.a');
    await waitFor(() => broker.requests('presence').length === reads + 2, 5000, 'the second read');
    await waitFor(() => w.last().members.length === 2, 5000, 'the capped list');
    assert.deepEqual([w.last().count, w.last().exact], [3, false]);
    assert.equal(w.leaves.length, 0);
    await a.close();
  });

  test('a count-only message during a read: read again after it', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker, { presenceDelay: 20 });
    let held = null;
    broker.onRequest = (conn, msg) => {
      if (msg.op !== 'presence' || held) return undefined;
      held = { conn, id: msg.id };
      return 'ignore';
    };
    const w = watcher();
    const subscribed = a.subscribe('room.a', () => {}, w.opts);
    await waitFor(() => held, 5000, 'the presence request');
    held.conn.send({ op: 'presence', topic: 'room.a', count: 5 });
    await a.ping();
    held.conn.send({ op: 'presence', id: held.id, topic: 'room.a', count: 1, members: [{ conn: a.conn }] });
    await subscribed;
    assert.equal(w.states[0].count, 5, 'the count-only message');
    assert.equal(w.states[1].exact, false, 'a count-only message came meanwhile');
    await waitFor(() => broker.requests('presence').length === 2, 5000, 'the second read');
    await waitFor(() => w.last().exact, 5000, 'exact again');
    assert.equal(w.last().count, 1);
    await a.close();
  });

  test('presence asked for a topic subscribed without it: the sub goes again with presence', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker);
    const b = fakeClient(broker);
    await opened(b);
    const box = inbox();
    await a.subscribe('room.a', box);
    assert.equal(a.members('room.a'), null);
    const w = watcher();
    await a.subscribe('room.a', () => {}, { ...w.opts, info: { ignored: true } });
    const subs = broker.requests('sub', 'room.a');
    assert.deepEqual(subs.map(({ id, ...r }) => r), [{ op: 'sub', topic: 'room.a' }, { op: 'sub', topic: 'room.a', presence: true }],
      'no info: it counts when the subscription is made');
    assert.deepEqual(w.last().members, [{ conn: a.conn }]);
    await b.subscribe('room.a', () => {});
    await waitFor(() => w.joins.length === 1, 5000, 'the join');
    // Refused (a topic without presence): that call rejects, the subscription stays.
    const plain = inbox();
    await a.subscribe('plain.a', plain);
    await assert.rejects(a.subscribe('plain.a', () => {}, { presence: true }), { code: 'bad_request' });
    assert.equal(a.members('plain.a'), null);
    assert.deepEqual(a.patterns().sort(), ['plain.a', 'room.a']);
    broker.publish('plain.a', 'still here');
    await plain.wait(1);
    // A fresh subscription of a topic without presence is refused as a whole.
    await assert.rejects(a.subscribe('plain.b', () => {}, { presence: true }), { code: 'bad_request' });
    await assert.rejects(a.subscribe('plain.c', () => {}, { info: { n: 1 } }), { code: 'bad_request' });
    assert.deepEqual(a.patterns().sort(), ['plain.a', 'room.a']);
    // Asked while the first sub is still on its way: a second sub, with presence.
    const w2 = watcher();
    const first = a.subscribe('room.b', () => {});
    const second = a.subscribe('room.b', () => {}, w2.opts);
    await Promise.all([first, second]);
    assert.deepEqual(broker.requests('sub', 'room.b').map((r) => r.presence), [undefined, true]);
    assert.deepEqual(w2.last().members, [{ conn: a.conn }]);
    await Promise.all([a.close(), b.close()]);
  });

  test('presence options are checked before anything is sent', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker);
    await opened(a);
    const bad = [
      ['room.*', { presence: true }],
      ['room.>', { info: { nick: 'x' } }],
      ['room.a', { presence: 'yes' }],
      ['room.a', { presence: 1 }],
      ['room.a', { info: 'ann' }],
      ['room.a', { info: ['ann'] }],
      ['room.a', { info: null }],
      ['room.a', { onJoin: 'x' }],
      ['room.a', { presence: true, onLeave: 1 }],
      ['room.a', { onPresence: {} }],
      ['room.a', { presence: false, onJoin() {} }],
    ];
    for (const [topic, opts] of bad) await assert.rejects(a.subscribe(topic, () => {}, opts), TypeError, JSON.stringify(opts));
    await a.ping();
    assert.equal(broker.requests('sub').length, 0);
    // onJoin alone implies presence: true.
    await a.subscribe('room.a', () => {}, { onJoin() {} });
    assert.equal(broker.requests('sub').at(-1).presence, true);
    assert.notEqual(a.members('room.a'), null);
    await a.close();
  });

  test('exceptions in onJoin, onLeave and onPresence go to the error event', T, async () => {
    const broker = new FakeBroker({ presence: ['room.*'] });
    const a = fakeClient(broker);
    const b = fakeClient(broker);
    const boom = (what) => () => {
      throw new Error(what);
    };
    await a.subscribe('room.a', () => {}, { onJoin: boom('join'), onLeave: boom('leave'), onPresence: boom('presence') });
    await b.subscribe('room.a', () => {});
    await b.close();
    await waitFor(() => a.errors.length === 5, 5000, 'the errors');
    assert.deepEqual(a.errors.map((e) => e.message), ['presence', 'join', 'presence', 'leave', 'presence']);
    assert.equal(a.members('room.a').count, 1, 'the list is kept all the same');
    await a.close();
  });
});

// ---- history, recovery, idempotent publish: against a real broker with --history -----

/** The fake broker's view of the fake tokens: their claims while not expired. */
function fakeAuth(tok) {
  const [, p] = tok.split('.');
  let c;
  try {
    c = JSON.parse(Buffer.from(p ?? '', 'base64url').toString());
  } catch {
    return null;
  }
  if (!c || c.bad || typeof c.exp !== 'number' || c.exp * 1000 <= Date.now()) return null;
  return { user: c.sub, exp: c.exp, sub: c.gale?.sub };
}

/** A token of user valid for ms (the fake broker's expiry is exact to the ms). */
const fakeToken = (user, ms, extra = {}) => jwt({ sub: user, exp: (Date.now() + ms) / 1000, ...extra });

describe('token refresh (fake broker)', () => {
  afterEach(closeAll);

  test('getToken gives the handshake token, then fresh ones before each expires: the connection lives on', T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    let calls = 0;
    const c = fakeClient(broker, { getToken: async () => (calls++, fakeToken('ann', 2500)) });
    await opened(c);
    assert.equal(calls, 1);
    assert.equal(broker.handshakes.length, 1);
    assert.match(c.url, /\?token=/);
    const box = inbox();
    await c.subscribe('t.x', box);
    await sleep(4000); // past the first token's expiry
    assert.deepEqual(c.events, ['connecting', 'open'], 'never disconnected');
    const refreshes = broker.requests('refresh');
    assert.ok(refreshes.length >= 2, `${refreshes.length} refreshes`);
    const claims = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString());
    assert.ok(refreshes.every((m) => typeof m.id === 'number' && claims(m.token).sub === 'ann'));
    assert.equal(broker.handshakes.length, 1);
    broker.publish('t.x', 'still here');
    await box.wait(1);
    assert.deepEqual(c.errors, []);
    await c.close();
  });

  test('a refused refresh is reported and tried again with backoff; the token in use stays until one is taken', T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    let calls = 0;
    const c = fakeClient(broker, {
      token: fakeToken('ann', 2500),
      getToken: async () => (++calls <= 2 ? fakeToken('ann', 60000, { bad: true }) : fakeToken('ann', 60000)),
      minDelay: 100,
    });
    await opened(c);
    assert.equal(calls, 0, 'the first connection uses options.token');
    const first = [...broker.conns][0].token;
    await waitFor(() => c.errors.length >= 2, 4000, 'two refused refreshes');
    assert.ok(c.errors.every((e) => e.code === 'bad_request' && /token refused/.test(e.message)), `${c.errors}`);
    await waitFor(() => [...broker.conns][0]?.token !== first, 4000, 'an accepted refresh');
    await sleep(1500); // past the first token's expiry
    assert.deepEqual(c.events, ['connecting', 'open']);
    assert.equal(c.state, 'open');
    assert.equal(broker.requests('refresh').length, 3);
    await c.close();
  });

  test("another user's token is forbidden; refreshToken() checks its argument and keeps a token for the next connection", T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    const ann = fakeToken('ann', 60000);
    const c = fakeClient(broker, { token: ann });
    await opened(c);
    await assert.rejects(c.refreshToken(fakeToken('bob', 60000)), (e) => e.code === 'forbidden');
    assert.equal([...broker.conns][0].token, ann);
    assert.ok(c.url.endsWith(`token=${ann}`));
    await assert.rejects(c.refreshToken(), TypeError, 'no token and no getToken');
    await assert.rejects(c.refreshToken(''), TypeError);
    const ann2 = fakeToken('ann', 60000, { n: 2 });
    await c.refreshToken(ann2);
    assert.equal([...broker.conns][0].token, ann2);
    assert.ok(c.url.endsWith(`token=${ann2}`), 'reconnects use the refreshed token');
    // Not connected: rejected, and the next connection presents it.
    broker.down = true;
    broker.dropAll();
    await waitFor(() => c.state === 'connecting');
    const ann3 = fakeToken('ann', 60000, { n: 3 });
    await assert.rejects(c.refreshToken(ann3), (e) => e.code === 'disconnected');
    await waitFor(() => broker.handshakes.at(-1) === ann3, 5000, 'an attempt with the token');
    broker.down = false;
    await waitFor(() => c.state === 'open', 5000, 'the reconnect');
    assert.equal([...broker.conns][0].token, ann3);
    await c.close();
  });

  test('1008 (token expired) ends a client without getToken; with it the client reconnects with a new token', T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    const plain = fakeClient(broker, { token: fakeToken('ann', 60000) });
    let calls = 0;
    const fresh = fakeClient(broker, { getToken: () => (calls++, fakeToken('ann', 60000, { n: calls })) });
    await Promise.all([opened(plain), opened(fresh)]);
    for (const conn of [...broker.conns]) conn.drop(1008, 'token expired');
    await waitFor(() => plain.state === 'closed', 5000, 'the plain client closed');
    await waitFor(() => fresh.state === 'open' && calls === 2, 5000, 'the getToken client back');
    assert.equal(broker.handshakes.length, 3);
    assert.notEqual(broker.handshakes[2], broker.handshakes[1]);
  });

  test('a subscription the new token no longer allows is dropped: an error naming it, the pattern forgotten', T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    const c = fakeClient(broker, { token: fakeToken('ann', 60000, { gale: { sub: ['a.>', 'b.>'] } }) });
    const a = inbox();
    const b = inbox();
    await c.subscribe('a.>', a);
    await c.subscribe('b.>', b);
    await c.refreshToken(fakeToken('ann', 60000, { gale: { sub: ['a.>'] } }));
    await waitFor(() => c.errors.length === 1, 2000, 'the drop reported');
    const e = c.errors[0];
    assert.ok(e instanceof GaleError);
    assert.equal(e.code, 'forbidden');
    assert.equal(e.topic, 'b.>');
    assert.deepEqual(c.patterns(), ['a.>']);
    broker.publish('b.x', 1);
    broker.publish('a.x', 2);
    await a.wait(1);
    assert.deepEqual(b.got, []);
    await c.close();
  });

  test('getToken failures are GaleErrors "token" (cause kept); the attempt is tried again', T, async () => {
    const broker = new FakeBroker({ auth: fakeAuth });
    let calls = 0;
    const boom = new Error('token service down');
    const c = fakeClient(broker, {
      getToken: async () => {
        calls++;
        if (calls === 1) throw boom;
        if (calls === 2) return 42;
        return fakeToken('ann', 60000);
      },
    });
    await opened(c);
    assert.equal(calls, 3);
    assert.deepEqual(c.errors.map((e) => e.code), ['token', 'token']);
    assert.equal(c.errors[0].cause, boom);
    assert.match(c.errors[0].message, /token service down/);
    assert.match(c.errors[1].message, /gave number/);
    assert.equal(broker.handshakes.length, 1, 'no attempt without a token');
    await c.close();
  });

  test('refresh on a broker without authentication: bad_request', T, async () => {
    const broker = new FakeBroker();
    const c = fakeClient(broker);
    await opened(c);
    await assert.rejects(c.refreshToken(fakeToken('ann', 60000)), (e) => e.code === 'bad_request');
    await c.close();
  });
});

const HAS_HISTORY = brokerHas('--history');
const HISTORY_ARGS = ['--history', 'hist.>=100'];

describe('history and recovery against a broker (--history)', {
  skip: HAS_HISTORY === false && 'this gale-broker has no --history flag',
}, () => {
  let broker;
  before(async () => {
    broker = await startBroker(HISTORY_ARGS);
  });
  after(() => broker?.stop());
  afterEach(closeAll);

  test('acks and msgs carry ep/off; a repeated mid is acked as dup and delivered once', T, async () => {
    const j = client(broker.wsUrl);
    const m = client(broker.wsUrl, { encoding: 'msgpack', codec: msgpack });
    const jbox = inbox();
    const mbox = inbox();
    await j.subscribe('hist.r1', jbox);
    await m.subscribe('hist.r1', mbox);
    const start = j.position('hist.r1');
    assert.equal(typeof start.ep, 'string');
    assert.equal(start.off, 0, 'an empty stream');
    assert.deepEqual(m.position('hist.r1'), start);
    const a1 = await j.publish('hist.r1', { n: 1 });
    const a2 = await m.publish('hist.r1', new Uint8Array([1, 2, 3]));
    assert.equal(a1.ep, start.ep);
    assert.equal(a1.off, 1);
    assert.equal(typeof a1.mid, 'string');
    assert.equal(a2.ep, start.ep);
    assert.equal(a2.off, 2);
    await jbox.wait(2);
    await mbox.wait(2);
    assert.deepEqual(jbox.info, [{ ep: start.ep, off: 1 }, { ep: start.ep, off: 2 }]);
    assert.deepEqual(mbox.info, jbox.info);
    assert.deepEqual(jbox.got[1].data, new Uint8Array([1, 2, 3]));
    assert.deepEqual(j.position('hist.r1'), { ep: start.ep, off: 2 });
    const d1 = await j.publish('hist.r1', 'once', { mid: 'r1-once' });
    const d2 = await m.publish('hist.r1', 'once', { mid: 'r1-once' });
    assert.equal(d1.off, 3);
    assert.ok(!d1.dup);
    assert.equal(d2.dup, true);
    await jbox.wait(3);
    await j.publish('hist.r1', 'after');
    await jbox.wait(4);
    assert.deepEqual(jbox.data().slice(2), ['once', 'after']);
    const plain = await j.publish('nohist.r1', 1);
    assert.equal(plain.ep, undefined);
    await Promise.all([j.close(), m.close()]);
  });

  test('history() in JSON and MessagePack; topics without history; patterns', T, async () => {
    const j = client(broker.wsUrl);
    const m = client(broker.wsUrl, { encoding: 'msgpack', codec: msgpack });
    await opened(j);
    await j.publish('hist.r2', { n: 1 });
    await m.publish('hist.r2', new Uint8Array([0, 255]));
    await j.publish('hist.r2', 'three');
    for (const c of [j, m]) {
      const h = await c.history('hist.r2');
      assert.equal(typeof h.ep, 'string');
      assert.equal(h.off, 3);
      assert.deepEqual(h.messages, [
        { off: 1, data: { n: 1 } },
        { off: 2, data: new Uint8Array([0, 255]) },
        { off: 3, data: 'three' },
      ], c.encoding);
      const last = await c.history('hist.r2', { limit: 1 });
      assert.deepEqual(last.messages, [{ off: 3, data: 'three' }]);
      assert.deepEqual(await c.history('nohist.r2'), { ep: undefined, off: 0, messages: [] });
      await assert.rejects(c.history('hist.*'), { code: 'bad_topic' });
    }
    await Promise.all([j.close(), m.close()]);
  });

  test('subscribe with an initial since replays the rest; another epoch is not recovered', T, async () => {
    const p = client(broker.wsUrl);
    await opened(p);
    let ep;
    for (let i = 1; i <= 4; i++) ({ ep } = await p.publish('hist.r6', i));
    const c = client(broker.wsUrl);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('hist.r6', box, { since: { ep, off: 1 }, onRecover: (r) => recoveries.push(r) });
    assert.deepEqual(recoveries, [{ topic: 'hist.r6', recovered: true, ep, off: 4 }]);
    assert.deepEqual(box.data(), [2, 3, 4]);
    const box2 = inbox();
    const since = { ep: 'no-such-epoch', off: 3 };
    await c.subscribe('hist.r6b', box2, { since, onRecover: (r) => recoveries.push(r) });
    assert.equal(recoveries[1].recovered, false);
    assert.equal(box2.got.length, 0);
    await Promise.all([p.close(), c.close()]);
  });

  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: a cut connection resubscribes with since and gets what it missed, once`, T, async () => {
      const topic = `hist.r3.${enc}`;
      const proxy = await proxyTo(broker.port);
      const c = client(proxy.wsUrl, { heartbeat: 0, ...encOpts });
      const p = client(broker.wsUrl);
      const box = inbox();
      const recoveries = [];
      await c.subscribe(topic, box, { onRecover: (r) => recoveries.push(r) });
      await opened(p);
      const { ep } = await p.publish(topic, 1);
      await p.publish(topic, 2);
      await box.wait(2);
      proxy.refusing = true;
      proxy.cut();
      await waitFor(() => c.state === 'connecting', 5000, 'the client to notice');
      await p.publish(topic, 3);
      await p.publish(topic, 4);
      proxy.refusing = false;
      await waitFor(() => recoveries.length === 1, 10000, 'the recovery');
      assert.deepEqual(recoveries, [{ topic, recovered: true, ep, off: 4 }]);
      await p.publish(topic, 5);
      await box.wait(5);
      await c.ping();
      assert.deepEqual(box.data(), [1, 2, 3, 4, 5]);
      assert.deepEqual(box.info.map((i) => i.off), [1, 2, 3, 4, 5]);
      await Promise.all([c.close(), p.close()]);
      await proxy.stop();
    });
  }

  test('a publish whose ack is lost with the connection is sent again and delivered once', T, async () => {
    const proxy = await proxyTo(broker.port);
    const pub = client(proxy.wsUrl, { heartbeat: 0 });
    const sub = client(broker.wsUrl);
    const box = inbox();
    await sub.subscribe('hist.r4', box);
    await opened(pub);
    proxy.deaf = true; // the broker's answers no longer reach pub
    const pending = pub.publish('hist.r4', 'once');
    pending.catch(() => {}); // awaited below
    await box.wait(1); // the broker has it
    proxy.cut();
    proxy.deaf = false;
    const ack = await pending;
    assert.equal(ack.dup, true, JSON.stringify(ack));
    assert.equal(ack.off, 1);
    assert.ok(proxy.connections >= 2, 'it reconnected');
    await pub.publish('hist.r4', 'next');
    await box.wait(2);
    await sub.ping();
    assert.deepEqual(box.data(), ['once', 'next']);
    await Promise.all([pub.close(), sub.close()]);
    await proxy.stop();
  });

  test('after a broker restart (a new epoch) onRecover reports recovered false', T, async () => {
    const b = new Broker(await freePort(), HISTORY_ARGS);
    openThings.add(b);
    await b.start();
    const c = client(b.wsUrl);
    const box = inbox();
    const recoveries = [];
    await c.subscribe('hist.r5', box, { onRecover: (r) => recoveries.push(r) });
    const { ep } = await c.publish('hist.r5', 1);
    await box.wait(1);
    await b.stop();
    await b.start();
    await waitFor(() => recoveries.length === 1, 10000, 'the recovery report');
    assert.equal(recoveries[0].recovered, false);
    assert.notEqual(recoveries[0].ep, ep);
    assert.deepEqual(c.position('hist.r5'), { ep: recoveries[0].ep, off: recoveries[0].off });
    await c.publish('hist.r5', 2);
    await box.wait(2);
    assert.deepEqual(box.data(), [1, 2]);
    await c.close();
    await b.stop();
  });
});

// ---- presence: against a real broker with --presence ----------------------------------

const HAS_PRESENCE = brokerHas('--presence-list-max');
const PRESENCE_ARGS = ['--presence', 'pres.>'];
const CONN_ID = /^[0-9a-f]{16}-\d+$/;

describe('presence against a broker (--presence)', {
  skip: HAS_PRESENCE === false && 'this gale-broker has no --presence flag',
}, () => {
  let broker;
  before(async () => {
    broker = await startBroker(PRESENCE_ARGS);
  });
  after(() => broker?.stop());
  afterEach(closeAll);

  test('JSON and MessagePack members with info: presence(), join and leave, the list kept', T, async () => {
    const j = client(broker.wsUrl);
    const m = client(broker.wsUrl, { encoding: 'msgpack', codec: msgpack });
    const w = watcher();
    await j.subscribe('pres.p1', () => {}, { ...w.opts, info: { nick: 'jay' } });
    assert.match(j.conn, CONN_ID);
    const jay = { conn: j.conn, info: { nick: 'jay' } };
    assert.deepEqual(w.last(), { topic: 'pres.p1', count: 1, members: [jay], exact: true });
    await m.subscribe('pres.p1', () => {}, { info: { nick: 'em', n: 2 } });
    assert.match(m.conn, CONN_ID);
    const em = { conn: m.conn, info: { nick: 'em', n: 2 } };
    await waitFor(() => w.joins.length === 1, 5000, "em's join");
    assert.deepEqual(w.joins, [{ ...em, topic: 'pres.p1' }]);
    for (const c of [j, m]) {
      const p = await c.presence('pres.p1');
      assert.deepEqual({ count: p.count, members: sorted(p.members) }, { count: 2, members: sorted([jay, em]) }, c.encoding);
    }
    assert.deepEqual(sorted(j.members('pres.p1').members), sorted([jay, em]));
    // A plain subscriber of a pattern is not present; an unsubscribe is a leave.
    const p = client(broker.wsUrl);
    await p.subscribe('pres.>', () => {});
    assert.equal((await p.presence('pres.p1')).count, 2);
    await m.close();
    await waitFor(() => w.leaves.length === 1, 5000, "em's leave");
    assert.deepEqual(w.leaves, [{ ...em, topic: 'pres.p1' }]);
    assert.deepEqual(j.members('pres.p1'), { topic: 'pres.p1', count: 1, members: [jay], exact: true });
    assert.deepEqual(w.joins.length, 1, 'no events about itself');
    assert.deepEqual(j.errors, []);
    await Promise.all([j.close(), p.close()]);
  });

  test('errors: a pattern, a topic without presence; presence asked for a topic held without it', T, async () => {
    const c = client(broker.wsUrl);
    await opened(c);
    await assert.rejects(c.presence('pres.*'), { code: 'bad_topic' });
    await assert.rejects(c.presence('nopres.a'), { code: 'bad_request' });
    await assert.rejects(c.subscribe('nopres.a', () => {}, { presence: true }), { code: 'bad_request' });
    await assert.rejects(c.subscribe('nopres.b', () => {}, { info: { a: 1 } }), { code: 'bad_request' });
    // A topic subscribed without presence, then with it: the broker takes the second sub.
    const w = watcher();
    await c.subscribe('pres.p2', () => {});
    await c.subscribe('pres.p2', () => {}, w.opts);
    const o = client(broker.wsUrl);
    await o.subscribe('pres.p2', () => {});
    await waitFor(() => w.joins.length === 1, 5000, 'the join after the second sub');
    assert.equal(c.members('pres.p2').count, 2);
    await Promise.all([c.close(), o.close()]);
  });

  for (const [enc, encOpts] of ENCODINGS) {
    test(`${enc}: a cut connection subscribes again with presence and info and reads the list again`, T, async () => {
      const topic = `pres.p3.${enc}`;
      const proxy = await proxyTo(broker.port);
      const c = client(proxy.wsUrl, { heartbeat: 0, ...encOpts });
      const o = client(broker.wsUrl);
      const w = watcher();
      const ow = watcher();
      await o.subscribe(topic, () => {}, { ...ow.opts, info: { nick: 'o' } });
      await c.subscribe(topic, () => {}, { ...w.opts, info: { nick: 'c' } });
      const first = c.conn;
      await waitFor(() => ow.joins.length === 1, 5000, "c's join");
      proxy.refusing = true;
      proxy.cut();
      await waitFor(() => ow.leaves.length === 1, 5000, "the broker forgets c's connection");
      assert.deepEqual(ow.leaves[0], { conn: first, info: { nick: 'c' }, topic });
      const late = client(broker.wsUrl);
      await late.subscribe(topic, () => {}, { info: { nick: 'late' } });
      proxy.refusing = false;
      await waitFor(() => ow.joins.length === 3, 10000, "c's join again");
      assert.notEqual(c.conn, first);
      assert.deepEqual(ow.joins.at(-1), { conn: c.conn, info: { nick: 'c' }, topic });
      await waitFor(() => c.members(topic)?.exact && c.members(topic).count === 3, 5000, "c's list read again");
      assert.deepEqual(w.joins.map((j) => j.info.nick), ['late'], 'the difference, reported');
      assert.deepEqual(sorted(c.members(topic).members).map((x) => x.info.nick).sort(), ['c', 'late', 'o']);
      await Promise.all([c.close(), o.close(), late.close()]);
      await proxy.stop();
    });
  }

  test('past --presence-events-max: count-only messages, the list read again', T, async () => {
    const b = new Broker(await freePort(), [...PRESENCE_ARGS, '--presence-events-max', '2']);
    openThings.add(b);
    await b.start();
    const c = client(b.wsUrl, { presenceDelay: 100 });
    const w = watcher();
    await c.subscribe('pres.big', () => {}, w.opts);
    const others = [];
    for (let i = 0; i < 4; i++) {
      const o = client(b.wsUrl);
      others.push(o);
      await o.subscribe('pres.big', () => {});
    }
    // Two members: one join event; past two: count-only messages, then a read.
    await waitFor(() => w.states.some((s) => s.count === 5 && !s.exact), 10000, 'a count-only message');
    await waitFor(() => w.last().count === 5 && w.last().members.length === 5, 10000, 'the list read again');
    assert.deepEqual(w.conns(), [c.conn, ...others.map((o) => o.conn)].sort());
    assert.ok(w.joins.length >= 1);
    await Promise.all([c.close(), ...others.map((o) => o.close())]);
    await b.stop();
  });
});

const JWT_SECRET = 'js-test-secret-0123456789abcdef';

describe('token refresh against a broker (--jwt-secret)', () => {
  let broker;
  before(async () => {
    broker = await startBroker(['--jwt-secret', JWT_SECRET]);
  });
  after(() => broker?.stop());
  afterEach(closeAll);

  const token = (user, ttl, sub = ['r.>'], pub = ['r.>']) =>
    jwt({ sub: user, iat: nowS(), exp: nowS() + ttl, gale: { sub, pub } }, JWT_SECRET);

  test('getToken: a token of 3 s is refreshed before it expires; the connection outlives it', T, async () => {
    let calls = 0;
    // The first token lives 3 s; the refreshed ones a minute.
    const c = client(broker.wsUrl, { getToken: () => token('carol', ++calls === 1 ? 3 : 60) });
    const box = inbox();
    await c.subscribe('r.live', box);
    await sleep(4500);
    assert.deepEqual(c.events, ['connecting', 'open'], 'not closed at the first exp');
    assert.ok(calls >= 2, `getToken called ${calls} times`);
    await c.publish('r.live', 'after the first exp');
    await box.wait(1);
    assert.deepEqual(c.errors, []);
    const metrics = await (await fetch(`${broker.httpUrl}/metrics`)).text();
    const ok = Number(/gale_token_refreshes_total\{outcome="ok"\} (\d+)/.exec(metrics)?.[1]);
    assert.ok(ok >= 1, metrics);
  });

  test('refused refreshes keep the token; a narrower token drops a subscription and widens publishing', T, async () => {
    const c = client(broker.wsUrl, { token: token('dave', 60, ['r.>', 's.>'], ['r.a']) });
    const s = inbox();
    await c.subscribe('s.>', s);
    await assert.rejects(c.refreshToken(token('erin', 60)), (e) => e.code === 'forbidden');
    await assert.rejects(
      c.refreshToken(token('dave', -5)),
      (e) => e.code === 'bad_request' && /^bad_request: token refused: /.test(e.message),
    );
    await assert.rejects(c.refreshToken(jwt({ sub: 'dave', exp: nowS() + 60 }, 'wrong')), (e) => e.code === 'bad_request');
    await assert.rejects(c.publish('r.b', 1), (e) => e.code === 'forbidden');
    await c.refreshToken(token('dave', 60, ['r.>'], ['r.a', 'r.b']));
    await waitFor(() => c.errors.some((e) => e.topic === 's.>'), 3000, 'the dropped subscription');
    const dropped = c.errors.find((e) => e.topic === 's.>');
    assert.equal(dropped.code, 'forbidden');
    assert.deepEqual(c.patterns(), []);
    await c.publish('r.b', 1); // the new token's permission
  });
});

describe('packaging', () => {
  test('the TypeScript declarations name every export of gale.js', async () => {
    const dts = readFileSync(path.join(SOURCE_DIR, 'clients/js/gale.d.ts'), 'utf8');
    const mod = await import('../../../web/gale.js');
    for (const name of Object.keys(mod)) {
      assert.match(dts, new RegExp(`export (declare )?(function|class|const|interface|type) ${name}\\b`), name);
    }
    const pkg = JSON.parse(readFileSync(path.join(SOURCE_DIR, 'clients/js/package.json'), 'utf8'));
    assert.equal(pkg.types, './gale.d.ts');
    assert.ok(pkg.files.includes('gale.js'));
    assert.equal(pkg.version, mod.VERSION);
  });
});

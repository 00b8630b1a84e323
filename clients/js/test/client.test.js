// gale.js against a real gale-broker. Run: node --experimental-websocket --test test/
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as msgpack from '@msgpack/msgpack';
import { Broker, SOURCE_DIR, WEB_ROOT, sleep, startBroker, waitFor, freePort } from './broker.js';
import { GaleError, backoffDelay, connect, matchPattern } from '../../../web/gale.js';

const T = { timeout: 30000 };

/** A client whose every event is recorded in c.events. */
function client(url, opts = {}) {
  const c = connect(url, { minDelay: 50, maxDelay: 400, ...opts });
  c.events = [];
  for (const ev of ['connecting', 'open', 'disconnect', 'closed']) c.on(ev, (d) => c.events.push(ev));
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  return c;
}

const opened = (c) => (c.state === 'open' ? Promise.resolve(c.hello) : new Promise((r) => c.on('open', r)));

/** Collects what a subscription receives. */
function inbox() {
  const got = [];
  const fn = (data, topic) => got.push({ topic, data });
  fn.got = got;
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

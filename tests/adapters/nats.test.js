// The npm NATS WebSocket client (nats.ws 1.30.3), unchanged, against gale-broker's /nats and
// against the reference nats-server (2.9.10, a WebSocket listener without TLS on a free
// loopback port, from a config file written here). The same cases run on both.
//
//   node --experimental-websocket --test tests/adapters/nats.test.js
//   GALE_BROKER=build/dev/gale-broker \
//     node --experimental-websocket --test tests/adapters/nats.test.js
//
// nats.ws needs a global WebSocket: Node 20 has one with --experimental-websocket (22+ by
// default). The gale half is skipped when GALE_BROKER is unset, the nats-server half when
// nats-server is not on PATH. Every wait is bounded; every process started is killed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { connect, StringCodec } from 'nats.ws';

import { Broker, freePort } from '../../clients/js/test/broker.js';

if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node with --experimental-websocket (Node 20)');
}

const sc = StringCodec();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const TEST = { timeout: 5000 };

/** p, or a rejection naming what after ms. */
function within(p, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/** Resolves once a TCP connection to port succeeds; rejects after ms or if proc exits. */
async function waitForPort(port, ms, proc) {
  const end = Date.now() + ms;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`process exited (${proc.exitCode ?? proc.signalCode}) before listening`);
    }
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.setTimeout(500);
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
      s.once('timeout', () => { s.destroy(); resolve(false); });
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`port ${port} not listening within ${ms} ms`);
    await sleep(50);
  }
}

// Processes started here never outlive the test process.
const children = new Set();
process.on('exit', () => {
  for (const p of children) p.kill('SIGKILL');
});

/** SIGTERM, then SIGKILL after ms; resolves at the exit. */
async function stopProcess(proc, ms = 3000) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), ms);
  await within(exited, ms + 2000, 'the process to exit');
  clearTimeout(t);
}

function hasNatsServer() {
  const r = spawnSync('nats-server', ['--version'], { encoding: 'utf8', timeout: 5000 });
  return r.status === 0;
}

class NatsServer {
  async start() {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'gale-nats-'));
    this.log = '';
    for (let attempt = 0; ; attempt++) {
      this.tcpPort = await freePort();
      this.port = await freePort();
      if (this.port === this.tcpPort) continue;
      const conf = path.join(this.dir, 'nats.conf');
      writeFileSync(conf, [
        `listen: 127.0.0.1:${this.tcpPort}`,
        'websocket {', `  listen: "127.0.0.1:${this.port}"`, '  no_tls: true', '}', ''].join('\n'));
      const proc = spawn('nats-server', ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
      this.proc = proc;
      children.add(proc);
      proc.once('exit', () => children.delete(proc));
      for (const s of [proc.stdout, proc.stderr]) s.on('data', (d) => { this.log += d; });
      try {
        await waitForPort(this.tcpPort, 10000, proc);
        await waitForPort(this.port, 10000, proc);
        return this;
      } catch (e) {
        await stopProcess(proc);
        if (attempt < 3 && /address already in use/i.test(this.log)) continue;
        throw new Error(`nats-server did not start: ${e.message}\n${this.log}`);
      }
    }
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/nats`;
  }

  async stop() {
    await stopProcess(this.proc);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

class GaleServer {
  async start() {
    this.broker = new Broker(await freePort());
    await within(this.broker.start(), 12000, 'gale-broker to start');
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.broker.port}/nats`;
  }

  async stop() {
    if (this.broker) await within(this.broker.stop(), 10000, 'gale-broker to stop');
  }
}

/** Collects the messages of sub until n arrived (or its iterator ends); bounded. */
async function collect(sub, n, ms = 3000, what = 'messages') {
  const got = [];
  const run = (async () => {
    for await (const m of sub) {
      got.push({ subject: m.subject, data: sc.decode(m.data), reply: m.reply });
      if (got.length === n) break;
    }
  })();
  await within(run, ms, `${n} ${what} (got ${got.length})`);
  return got;
}

const targets = [
  {
    name: 'nats-server',
    skip: process.env.GALE_SKIP_REFERENCE
      ? 'GALE_SKIP_REFERENCE: the reference half runs in the plain build'
      : hasNatsServer() ? false : 'nats-server is not on PATH',
    make: () => new NatsServer(),
  },
  {
    name: 'gale',
    skip: process.env.GALE_BROKER ? false : 'GALE_BROKER is unset',
    make: () => new GaleServer(),
  },
];

for (const target of targets) {
  describe(target.name, { skip: target.skip }, () => {
    let server;
    const open = [];

    async function nc(opts = {}) {
      const c = await within(
        connect({ servers: server.url, reconnect: false, timeout: 3000, ...opts }),
        4000, `connect to ${server.url}`);
      open.push(c);
      return c;
    }

    before(async () => {
      server = await target.make().start();
    });

    after(async () => {
      for (const c of open) {
        if (!c.isClosed()) await within(c.close(), 2000, 'close').catch(() => {});
      }
      if (server) await server.stop();
    });

    test('connect: INFO as nats.ws sees it', TEST, async () => {
      const c = await nc();
      assert.equal(c.info.proto, 1);
      assert.ok(c.info.max_payload > 0, JSON.stringify(c.info));
      assert.equal(typeof c.info.headers, 'boolean');
      assert.equal(c.getServer(), `127.0.0.1:${server.url.split(':')[2].split('/')[0]}`);
      await within(c.close(), 2000, 'close');
      assert.ok(c.isClosed());
    });

    test('subscribe and publish, payloads exact', TEST, async () => {
      const sub = await nc();
      const pub = await nc();
      const s = sub.subscribe('js.a');
      await within(sub.flush(), 2000, 'flush');
      const texts = ['one', '', 'three ✓', 'x'.repeat(1000)];
      for (const t of texts) pub.publish('js.a', sc.encode(t));
      const got = await collect(s, texts.length);
      assert.deepEqual(got.map((m) => m.data), texts);
      assert.ok(got.every((m) => m.subject === 'js.a'));
      s.unsubscribe();
    });

    test('wildcards * and >', TEST, async () => {
      const c = await nc();
      const star = c.subscribe('w.*');
      const gt = c.subscribe('w.>');
      await within(c.flush(), 2000, 'flush');
      for (const subj of ['w.a', 'w.a.b', 'w', 'x.a', 'w.c']) c.publish(subj, sc.encode(subj));
      const [gotStar, gotGt] = await Promise.all([collect(star, 2), collect(gt, 3)]);
      assert.deepEqual(gotStar.map((m) => m.subject), ['w.a', 'w.c']);
      assert.deepEqual(gotGt.map((m) => m.subject), ['w.a', 'w.a.b', 'w.c']);
      star.unsubscribe();
      gt.unsubscribe();
    });

    test('request/reply with a responder on another connection', TEST, async () => {
      const responder = await nc();
      const requester = await nc();
      const s = responder.subscribe('svc.upper', {
        callback: (err, m) => {
          if (!err) m.respond(sc.encode(sc.decode(m.data).toUpperCase()));
        },
      });
      await within(responder.flush(), 2000, 'flush');
      const r = await requester.request('svc.upper', sc.encode('hello'), { timeout: 2000 });
      assert.equal(sc.decode(r.data), 'HELLO');
      const r2 = await requester.request('svc.upper', sc.encode('again'), { timeout: 2000 });
      assert.equal(sc.decode(r2.data), 'AGAIN');
      s.unsubscribe();
    });

    test('request/reply on one connection', TEST, async () => {
      const c = await nc();
      const s = c.subscribe('svc.same', {
        callback: (err, m) => {
          if (!err) m.respond(sc.encode(`re: ${sc.decode(m.data)}`));
        },
      });
      const r = await c.request('svc.same', sc.encode('q'), { timeout: 2000 });
      assert.equal(sc.decode(r.data), 're: q');
      s.unsubscribe();
    });

    test('subscribe with max, and unsubscribe(max)', TEST, async () => {
      const c = await nc();
      const s1 = c.subscribe('m.x', { max: 2 });
      const s2 = c.subscribe('m.y');
      s2.unsubscribe(3);
      await within(c.flush(), 2000, 'flush');
      for (let i = 0; i < 5; i++) {
        c.publish('m.x', sc.encode(`x${i}`));
        c.publish('m.y', sc.encode(`y${i}`));
      }
      // The iterators end by themselves after max messages.
      const [g1, g2] = await Promise.all([collect(s1, 99), collect(s2, 99)]);
      assert.deepEqual(g1.map((m) => m.data), ['x0', 'x1']);
      assert.deepEqual(g2.map((m) => m.data), ['y0', 'y1', 'y2']);
      assert.ok(s1.isClosed() && s2.isClosed());
      // The server stops too: a new subscription on the same subjects gets only new ones.
      const s3 = c.subscribe('m.x');
      await within(c.flush(), 2000, 'flush');
      c.publish('m.x', sc.encode('later'));
      assert.deepEqual((await collect(s3, 1)).map((m) => m.data), ['later']);
      s3.unsubscribe();
    });

    test('flush (PING/PONG) and rtt', TEST, async () => {
      const c = await nc();
      for (let i = 0; i < 3; i++) await within(c.flush(), 2000, 'flush');
      const rtt = await within(c.rtt(), 2000, 'rtt');
      assert.ok(rtt >= 0 && rtt < 2000, `rtt ${rtt}`);
    });

    test('drain delivers what was published, then closes', TEST, async () => {
      const sub = await nc();
      const pub = await nc();
      const got = [];
      sub.subscribe('d.x', { callback: (err, m) => { if (!err) got.push(sc.decode(m.data)); } });
      await within(sub.flush(), 2000, 'flush');
      for (let i = 0; i < 50; i++) pub.publish('d.x', sc.encode(`${i}`));
      await within(pub.flush(), 2000, 'flush');
      // Published and flushed by pub; sub's flush makes sure they reached sub.
      await within(sub.flush(), 2000, 'flush');
      await within(sub.drain(), 3000, 'drain');
      const err = await within(sub.closed(), 2000, 'closed after drain');
      assert.equal(err, undefined);
      assert.ok(sub.isClosed());
      assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => `${i}`));
      await within(pub.close(), 2000, 'close');
      assert.equal(await within(pub.closed(), 2000, 'closed'), undefined);
    });
  });
}

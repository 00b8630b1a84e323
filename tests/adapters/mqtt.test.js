// The npm MQTT client (mqtt 5.16.0, MQTT 3.1.1: protocolVersion 4), unchanged, against
// gale-broker's /mqtt and against the reference server, Debian's mosquitto 2.0.11 (a
// WebSocket listener beside a plain one on free loopback ports, from a config file written
// here). The same cases run on both.
//
//   node --test tests/adapters/mqtt.test.js
//   GALE_BROKER=build/dev/gale-broker node --test tests/adapters/mqtt.test.js
//
// The gale half is skipped when GALE_BROKER is unset, the mosquitto half when
// /usr/sbin/mosquitto is absent. One server per half; each test uses its own topics. Every
// wait is bounded (5 s at most); every process started is killed at the end.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  accessSync, closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import mqtt from 'mqtt';

import { Broker, freePort } from '../../clients/js/test/broker.js';

const MOSQUITTO = '/usr/sbin/mosquitto';
const WAIT = 5000;
const TEST = { timeout: 8000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** p, or a rejection naming what after ms. */
function within(p, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

function executable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
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
    await sleep(20);
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

/** mosquitto 2.0.11: its WebSocket listener starts only beside a plain TCP one, and as
 * root only with `user root`; 2.0 refuses anonymous clients unless told otherwise. */
class Mosquitto {
  async start() {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'gale-mosquitto-'));
    this.tcpPort = await freePort();
    do this.port = await freePort(); while (this.port === this.tcpPort);
    const conf = path.join(this.dir, 'mosquitto.conf');
    writeFileSync(conf, [
      ...(process.getuid && process.getuid() === 0 ? ['user root'] : []),
      'per_listener_settings true',
      'log_dest stderr',
      'persistence false',
      `listener ${this.tcpPort} 127.0.0.1`,
      'allow_anonymous true',
      `listener ${this.port} 127.0.0.1`,
      'protocol websockets',
      'allow_anonymous true',
      '',
    ].join('\n'));
    this.logPath = path.join(this.dir, 'mosquitto.log');
    const fd = openSync(this.logPath, 'w');
    this.proc = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    children.add(this.proc);
    this.proc.once('exit', () => children.delete(this.proc));
    try {
      await waitForPort(this.port, WAIT, this.proc);
      await waitForPort(this.tcpPort, WAIT, this.proc);
    } catch (e) {
      throw new Error(`mosquitto did not start: ${e.message}\n${this.log()}`);
    }
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/mqtt`;
  }

  log() {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  async stop() {
    await stopProcess(this.proc);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

class Gale {
  async start() {
    this.broker = await new Broker(await freePort()).start();
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.broker.port}/mqtt`;
  }

  async stop() {
    await this.broker.stop();
  }
}

const targets = [
  {
    name: 'mosquitto',
    make: () => new Mosquitto(),
    skip: process.env.GALE_SKIP_REFERENCE
      ? 'GALE_SKIP_REFERENCE: the reference half runs in the plain build'
      : executable(MOSQUITTO) ? false : `no ${MOSQUITTO}`,
  },
  {
    name: 'gale',
    make: () => new Gale(),
    skip: process.env.GALE_BROKER ? false : 'GALE_BROKER is unset',
  },
];

/** A connected client (CONNACK 0) whose messages queue up for next(). */
async function client(server, open, opts = {}) {
  const c = mqtt.connect(server.url, {
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: WAIT,
    keepalive: 30,
    clean: true,
    ...opts,
  });
  open.add(c);
  c.queue = [];
  c.waiters = [];
  c.errors = [];
  c.on('error', (e) => c.errors.push(e));
  c.on('message', (topic, payload, packet) => {
    const m = { topic, payload: Buffer.from(payload), qos: packet.qos, retain: packet.retain };
    const w = c.waiters.shift();
    if (w) w(m);
    else c.queue.push(m);
  });
  const connack = await within(new Promise((resolve, reject) => {
    c.once('connect', resolve);
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before CONNACK')));
  }), WAIT, 'CONNACK');
  assert.equal(connack.returnCode, 0);
  return c;
}

/** The next message of c (bounded). */
function next(c, ms = WAIT) {
  if (c.queue.length) return Promise.resolve(c.queue.shift());
  let waiter;
  const p = new Promise((resolve) => {
    waiter = resolve;
    c.waiters.push(resolve);
  });
  return within(p, ms, 'a message').catch((e) => {
    c.waiters = c.waiters.filter((w) => w !== waiter);
    throw e;
  });
}

/** Nothing more arrives at c within ms. */
async function quiet(c, ms = 200) {
  await sleep(ms);
  assert.deepEqual(c.queue.map((m) => [m.topic, m.payload.toString()]), []);
}

async function endAll(open) {
  const all = [...open];
  open.clear();
  await Promise.all(all.map((c) => within(c.endAsync(true), 2000, 'a client to end')
    .catch(() => c.stream && c.stream.destroy())));
}

let seq = 0;

for (const target of targets) {
  describe(`mqtt.js against ${target.name}`, { skip: target.skip }, () => {
    let server;
    const open = new Set();
    const topic = () => `t${process.pid}x${++seq}`;

    before(async () => {
      server = await target.make().start();
    });

    after(async () => {
      await endAll(open);
      if (server) await server.stop();
    });

    test('connect: CONNACK 0, MQTT 3.1.1', TEST, async () => {
      const c = await client(server, open);
      assert.equal(c.connected, true);
      assert.equal(c.options.protocolVersion, 4);
    });

    test('subscribe QoS 1 is granted 1', TEST, async () => {
      const t = topic();
      const c = await client(server, open);
      const granted = await within(c.subscribeAsync(`${t}/a`, { qos: 1 }), WAIT, 'SUBACK');
      assert.deepEqual(granted.map((g) => [g.topic, g.qos]), [[`${t}/a`, 1]]);
    });

    test('publish QoS 0, 1, 2: each delivered once', TEST, async () => {
      const t = topic();
      const sub = await client(server, open);
      const pub = await client(server, open);
      await within(sub.subscribeAsync(`${t}/#`, { qos: 1 }), WAIT, 'SUBACK');
      for (const qos of [0, 1, 2]) {
        // resolves on write (0), PUBACK (1), PUBCOMP (2)
        await within(pub.publishAsync(`${t}/${qos}`, `m${qos}`, { qos }), WAIT,
          `QoS ${qos} publish`);
      }
      const got = [];
      for (let i = 0; i < 3; i++) got.push(await next(sub));
      got.sort((a, b) => a.topic.localeCompare(b.topic));
      assert.deepEqual(got.map((m) => [m.topic, m.payload.toString()]),
        [[`${t}/0`, 'm0'], [`${t}/1`, 'm1'], [`${t}/2`, 'm2']]);
      await quiet(sub);
    });

    test('retained: a new subscriber gets it with the retain flag', TEST, async () => {
      const t = `${topic()}/r`;
      const pub = await client(server, open);
      const old = await client(server, open);
      await within(old.subscribeAsync(t, { qos: 1 }), WAIT, 'SUBACK');
      await within(pub.publishAsync(t, 'kept', { qos: 1, retain: true }), WAIT, 'PUBACK');
      const live = await next(old);
      assert.equal(live.payload.toString(), 'kept');
      assert.equal(live.retain, false);
      const late = await client(server, open);
      await within(late.subscribeAsync(t, { qos: 1 }), WAIT, 'SUBACK');
      const m = await next(late);
      assert.equal(m.topic, t);
      assert.equal(m.payload.toString(), 'kept');
      assert.equal(m.retain, true);
      // cleared again, so that it does not linger on the shared server
      await within(pub.publishAsync(t, '', { qos: 1, retain: true }), WAIT, 'PUBACK');
    });

    test('wildcards + and #', TEST, async () => {
      const t = topic();
      const plus = await client(server, open);
      const hash = await client(server, open);
      const pub = await client(server, open);
      await within(plus.subscribeAsync([`${t}/+/x`, `${t}/end`], { qos: 1 }), WAIT, 'SUBACK');
      await within(hash.subscribeAsync(`${t}/a/#`, { qos: 1 }), WAIT, 'SUBACK');
      for (const s of ['a/x', 'a/y', 'b/x', 'a', 'a/b/c', 'x/a/x', 'end']) {
        await within(pub.publishAsync(`${t}/${s}`, s, { qos: 1 }), WAIT, 'PUBACK');
      }
      const plusGot = [];
      for (;;) {
        const m = await next(plus);
        if (m.topic === `${t}/end`) break;
        plusGot.push(m.payload.toString());
      }
      assert.deepEqual(plusGot.sort(), ['a/x', 'b/x']);
      const hashGot = [];
      for (let i = 0; i < 4; i++) hashGot.push((await next(hash)).payload.toString());
      assert.deepEqual(hashGot.sort(), ['a', 'a/b/c', 'a/x', 'a/y']);
      await quiet(hash);
    });

    test('unsubscribe stops delivery', TEST, async () => {
      const t = topic();
      const sub = await client(server, open);
      const pub = await client(server, open);
      await within(sub.subscribeAsync([`${t}/a`, `${t}/mark`], { qos: 1 }), WAIT, 'SUBACK');
      await within(pub.publishAsync(`${t}/a`, 'before', { qos: 1 }), WAIT, 'PUBACK');
      assert.equal((await next(sub)).payload.toString(), 'before');
      await within(sub.unsubscribeAsync(`${t}/a`), WAIT, 'UNSUBACK');
      await within(pub.publishAsync(`${t}/a`, 'after', { qos: 1 }), WAIT, 'PUBACK');
      await within(pub.publishAsync(`${t}/mark`, 'mark', { qos: 1 }), WAIT, 'PUBACK');
      const m = await next(sub);
      assert.deepEqual([m.topic, m.payload.toString()], [`${t}/mark`, 'mark']);
    });

    test('the will is published when a client ends abnormally', TEST, async () => {
      const t = `${topic()}/will`;
      const sub = await client(server, open);
      await within(sub.subscribeAsync(t, { qos: 1 }), WAIT, 'SUBACK');
      const dying = await client(server, open, {
        will: { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false },
      });
      const closed = new Promise((r) => dying.once('close', r));
      dying.stream.destroy(); // the socket ends: no DISCONNECT, no close frame
      await within(closed, WAIT, 'the client to close');
      const m = await next(sub);
      assert.deepEqual([m.topic, m.payload.toString(), m.retain], [t, 'gone', false]);
    });

    test('no will after a clean disconnect', TEST, async () => {
      const t = topic();
      const sub = await client(server, open);
      await within(sub.subscribeAsync(`${t}/+`, { qos: 1 }), WAIT, 'SUBACK');
      const polite = await client(server, open, {
        will: { topic: `${t}/polite`, payload: Buffer.from('must not'), qos: 1, retain: false },
      });
      await within(polite.endAsync(), WAIT, 'DISCONNECT');
      const dying = await client(server, open, {
        will: { topic: `${t}/dying`, payload: Buffer.from('marker'), qos: 1, retain: false },
      });
      dying.stream.destroy();
      const m = await next(sub);
      assert.deepEqual([m.topic, m.payload.toString()], [`${t}/dying`, 'marker']);
      await quiet(sub, 300);
    });

    test('binary payload arrives byte-exact', TEST, async () => {
      const t = topic();
      const sub = await client(server, open);
      const pub = await client(server, open);
      await within(sub.subscribeAsync(t, { qos: 1 }), WAIT, 'SUBACK');
      const data = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      await within(pub.publishAsync(t, data, { qos: 1 }), WAIT, 'PUBACK');
      const m = await next(sub);
      assert.ok(Buffer.compare(m.payload, data) === 0, `got ${m.payload.toString('hex')}`);
    });
  });
}

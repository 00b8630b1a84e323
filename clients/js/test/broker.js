// Starts and stops a real gale-broker for the tests: on 127.0.0.1, on a port picked
// here, with the source tree's web/ as its web root. The binary comes from $GALE_BROKER
// (ctest sets it), else the first build tree found.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SOURCE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const WEB_ROOT = path.join(SOURCE_DIR, 'web');

export function brokerPath() {
  if (process.env.GALE_BROKER) return process.env.GALE_BROKER;
  for (const dir of ['build-js', 'build/ci', 'build/release', 'build']) {
    const p = path.join(SOURCE_DIR, dir, 'gale-broker');
    if (existsSync(p)) return p;
  }
  throw new Error('set GALE_BROKER to the gale-broker binary');
}

/** Whether the broker's --help mentions flag (e.g. '--history'), or null without a broker. */
export function brokerHas(flag) {
  let bin;
  try {
    bin = brokerPath();
  } catch {
    return null;
  }
  const r = spawnSync(bin, ['--help'], { encoding: 'utf8', timeout: 10000 });
  return `${r.stdout}${r.stderr}`.includes(flag);
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Brokers a failed test left behind do not outlive the test process.
const running = new Set();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

const SANITIZER_MARKERS = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
  'AddressSanitizer:DEADLYSIGNAL'];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value or ms pass. */
export async function waitFor(fn, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export class Broker {
  /** webRoot null: no --web-root, the broker finds its own. */
  constructor(port, extraArgs = [], webRoot = WEB_ROOT) {
    this.port = port;
    this.extraArgs = extraArgs;
    this.webRoot = webRoot;
    this.proc = null;
    this.log = '';
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  async start() {
    const args = ['--listen', `127.0.0.1:${this.port}`, '--log-level', 'warn', ...this.extraArgs];
    if (this.webRoot) args.push('--web-root', this.webRoot);
    // The port of a broker just stopped may take a moment to be free again.
    const end = Date.now() + 10000;
    for (;;) {
      const proc = spawn(brokerPath(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
      this.proc = proc;
      running.add(proc);
      proc.once('exit', () => running.delete(proc));
      proc.stderr.on('data', (d) => {
        this.log += d;
      });
      const exited = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
      proc.exited = exited;
      const ok = await Promise.race([
        waitFor(() => this._healthy(), 10000, 'the broker to answer /healthz').then(() => true),
        exited.then(() => false),
      ]);
      if (ok) return this;
      if (Date.now() > end) throw new Error(`gale-broker did not start:\n${this.log}`);
      await sleep(100);
    }
  }

  async _healthy() {
    try {
      const r = await fetch(`${this.httpUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
      return r.ok;
    } catch {
      return false;
    }
  }

  /** SIGTERM (the broker closes every connection with 1001), then waits for the exit. */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 8000);
    await proc.exited;
    clearTimeout(t);
    // Under ASan/UBSan (the asan build's ctest run) the broker's own bugs fail the test.
    const bad = SANITIZER_MARKERS.find((m) => this.log.includes(m));
    if (bad) throw new Error(`gale-broker reported "${bad}":\n${this.log}`);
  }

  pause() {
    this.proc.kill('SIGSTOP');
  }

  resume() {
    this.proc.kill('SIGCONT');
  }
}

export async function startBroker(extraArgs = []) {
  const b = new Broker(await freePort(), extraArgs);
  return b.start();
}

/** A TCP proxy in front of a broker whose connections a test can cut (the client sees
 * 1006, the broker a vanished peer), refuse, or make deaf (what the broker sends is
 * swallowed: acks get lost). */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.refusing = false;
    this.deaf = false;
    this.connections = 0;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  start() {
    this.server = net.createServer((down) => this._accept(down));
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        resolve(this);
      });
    });
  }

  _accept(down) {
    if (this.refusing) {
      down.destroy();
      return;
    }
    this.connections++;
    const up = net.connect(this.targetPort, '127.0.0.1');
    const pair = { down, up };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on('data', (d) => up.write(d));
    up.on('data', (d) => {
      if (!this.deaf) down.write(d);
    });
    for (const s of [down, up]) {
      s.on('error', end);
      s.on('close', end);
    }
  }

  /** Cuts every connection through the proxy. */
  cut() {
    for (const { down, up } of [...this.pairs]) {
      down.destroy();
      up.destroy();
    }
    this.pairs.clear();
  }

  stop() {
    this.cut();
    if (!this.server.listening) return Promise.resolve();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// The demo page served by a real gale-broker, in Debian's headless Chromium driven by
// playwright-core: two tabs chat, the inspector shows what another client publishes,
// the page survives a broker restart, no console errors, screenshots as artifacts.
// History and recovery (brokers with --history 'chat.*.msg=100/1d', as scripts/run and
// deploy/docker-compose.yml start them): a room shows its last lines on joining; a line
// published while the page is cut off (a TCP proxy between page and broker) arrives once
// after the reconnect, and so do the page's own lines queued or unacknowledged meanwhile;
// in a cluster (two brokers with --redis on a redis-server started here, skipped without
// one) the broker the page is on is killed and the page recovers on the other broker, or
// on the same one restarted.
// Presence (brokers with --presence 'chat.*.msg', as scripts/run and deploy start them):
// two tabs in a room each see the other in its member list (their own entry marked),
// "N online" counts them, a rename shows, the lists come back after a broker restart, and
// a closed tab leaves the other's list.
//
//   GALE_BROKER=build/gale-broker node --experimental-websocket --test tests/e2e/
//   GALE_E2E_ARTIFACTS=dir (default tests/e2e/artifacts), GALE_CHROMIUM=/usr/bin/chromium
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Broker, TcpProxy, brokerHas, freePort, sleep, waitFor } from '../../clients/js/test/broker.js';
import { connect } from '../../web/gale.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.GALE_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const CHROMIUM = process.env.GALE_CHROMIUM || '/usr/bin/chromium';
const STEP = 15000; // ms for any one thing the page must show
// What scripts/run and deploy/docker-compose.yml give the brokers: the chat rooms keep
// their last 100 lines for a day.
const HISTORY = ['--history', 'chat.*.msg=100/1d'];
// ... and track who is in them (a broker without --presence: the page chats without a
// member list, and the presence checks are skipped).
const HAS_PRESENCE = brokerHas('--presence-list-max') !== false;
const PRESENCE = HAS_PRESENCE ? ['--presence', 'chat.*.msg'] : [];
const SERVED = [...HISTORY, ...PRESENCE];
// Phases in which the page is meant to lose its broker: the browser's report of the
// WebSocket connections that fail meanwhile is expected there, and nothing else.
const BROKER_AWAY = new Set(['restart', 'offline', 'ack lost', 'cluster kill', 'cluster restart', 'presence restart']);
const expectedProblem = (p) => BROKER_AWAY.has(p.phase) && /WebSocket connection to .* failed/.test(p.text);

let broker;
let context;
let userDataDir;
let nodeClient;
const problems = []; // console errors and page errors, with the phase they happened in
let phase = 'start';

function watch(page, name) {
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push({ page: name, phase, text: msg.text() });
  });
  page.on('pageerror', (err) => problems.push({ page: name, phase, text: `pageerror: ${err.message}` }));
  page.on('requestfailed', (req) => {
    // A WebSocket that cannot connect while the broker is down is expected; nothing else.
    if (!req.url().endsWith('/ws')) problems.push({ page: name, phase, text: `request failed: ${req.url()}` });
  });
}

async function openDemo(name, base = broker.httpUrl) {
  const page = await context.newPage();
  watch(page, name);
  await page.goto(`${base}/`, { timeout: STEP });
  await page.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
  // The default subscriptions and the chat room are live when their chips are.
  await page.locator('#subs .chip[data-pattern="demo.>"][data-state="live"]').waitFor({ timeout: STEP });
  await page.locator('#messages .sys').first().waitFor({ timeout: STEP });
  return page;
}

async function say(page, text) {
  await page.fill('#chat-text', text);
  await page.press('#chat-text', 'Enter');
}

/** The chat lines the page shows, in order: {text, from, mine, pending, failed, off}. */
function chatLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#messages li.msg')].map((li) => ({
      text: li.querySelector('.bubble').textContent,
      from: li.querySelector('.meta b').textContent,
      mine: li.classList.contains('mine'),
      pending: li.classList.contains('pending'),
      failed: li.classList.contains('failed'),
      off: li.dataset.off ? Number(li.dataset.off) : null,
    })),
  );
}

/** The room's member list as the page shows it: each entry's text ("ann (you)" for the
 * tab's own) and its connection ids. */
function memberList(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#members li.member:not(.more)')].map((li) => ({
      text: li.textContent,
      you: li.classList.contains('you'),
      conns: li.dataset.conn.split(' '),
    })),
  );
}

/** Waits until the page's member list reads texts, in order (its own entry first). */
async function membersShown(page, texts, what) {
  let last;
  await waitFor(async () => {
    last = (await memberList(page)).map((m) => m.text);
    return JSON.stringify(last) === JSON.stringify(texts);
  }, STEP, `${what}: ${JSON.stringify(texts)}`).catch((e) => {
    throw new Error(`${e.message}; shown: ${JSON.stringify(last)}`);
  });
}

async function setNick(page, nick) {
  await page.fill('#nick', nick);
  await page.dispatchEvent('#nick', 'change');
}

/** The system lines the page shows, in order. */
function sysLines(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages li.sys')].map((li) => li.textContent));
}

/** Waits for the line with this text to be shown, then a moment more (for a second copy,
 * e.g. a publish sent again after the reconnect), and checks it is there exactly once,
 * as the given kind (mine or not, acknowledged). */
async function onceShown(page, text, { mine = false } = {}) {
  await page.locator('#messages .msg .bubble', { hasText: text }).first().waitFor({ timeout: STEP });
  await waitFor(async () => !(await chatLines(page)).some((l) => l.text === text && l.pending), STEP, `"${text}" acknowledged`);
  await sleep(1000);
  const same = (await chatLines(page)).filter((l) => l.text === text);
  assert.equal(same.length, 1, `"${text}" shown ${same.length} times`);
  assert.equal(same[0].mine, mine, `"${text}" mine`);
  assert.equal(same[0].failed, false, `"${text}" failed`);
  return same[0];
}

/** A chat line as the page publishes it (a mid of its own in the data and on the pub). */
let lineSeq = 0;
function line(from, text) {
  return { from, text, ts: Date.now(), tab: `tab-${from}`, mid: `${from}-${process.pid}-${lineSeq++}` };
}

/** Publishes lines from node to a room (with the line's mid, as the page does). */
async function publishLines(client, room, from, texts) {
  const acks = [];
  for (const text of texts) {
    const m = line(from, text);
    acks.push(await client.publish(`chat.${room}.msg`, m, { mid: m.mid }));
  }
  return acks;
}

/** The texts a node client has received on a topic (a record of every delivery). */
function recorder(client, topic) {
  const got = [];
  const ready = client.subscribe(topic, (data) => got.push(data?.text));
  return { got, ready, times: (text) => got.filter((t) => t === text).length };
}

/** A redis-server of its own (no persistence) on a free loopback port. */
class Redis {
  async start() {
    this.port = await freePort();
    this.log = '';
    this.proc = spawn('redis-server', ['--save', '', '--appendonly', 'no', '--port', String(this.port),
      '--bind', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [this.proc.stdout, this.proc.stderr]) s.on('data', (d) => (this.log += d));
    const proc = this.proc;
    process.once('exit', () => proc.kill('SIGKILL')); // not outliving a failed test
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.exited = exited;
    const up = await Promise.race([
      waitFor(() => this._ping(), 10000, 'redis-server to answer PING'),
      exited.then(() => false),
    ]);
    if (!up) throw new Error(`redis-server exited:\n${this.log}`);
    return this;
  }

  _ping() {
    return new Promise((resolve) => {
      const s = net.connect(this.port, '127.0.0.1');
      s.setTimeout(1000, () => s.destroy());
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(false));
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        resolve(d.toString().startsWith('+PONG'));
        s.destroy();
      });
    });
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}

/** Kills a broker without a goodbye (SIGKILL): its connections just vanish. */
async function killBroker(b) {
  b.proc.kill('SIGKILL');
  await b.proc.exited;
}

const hasRedisServer = spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).status === 0;
const clusterSkip = !hasRedisServer
  ? 'redis-server is not installed (scripts/deps test installs it)'
  : brokerHas('--redis') === false ? 'gale-broker has no --redis' : false;

/** A screenshot of the whole page at this width (a viewport as tall as the page, so that
 * the sticky header stays on top). */
async function fullShot(page, width, file) {
  await page.setViewportSize({ width, height: 900 });
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.setViewportSize({ width, height });
  await sleep(300);
  await page.screenshot({ path: path.join(ARTIFACTS, file) });
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  broker = new Broker(await freePort(), SERVED);
  await broker.start();
  userDataDir = mkdtempSync(path.join(os.tmpdir(), 'gale-e2e-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1360, height: 900 },
    timeout: 30000,
  });
  nodeClient = connect(broker.wsUrl, { minDelay: 50, maxDelay: 300 });
});

after(async () => {
  await nodeClient?.close();
  await context?.close();
  await broker?.stop();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

test('the broker serves the demo, its assets and /gale.js', async () => {
  for (const [p, type] of [['/', 'text/html'], ['/gale.js', 'javascript'], ['/app.js', 'javascript'],
    ['/style.css', 'text/css'], ['/favicon.svg', 'image/svg\\+xml']]) {
    const r = await fetch(`${broker.httpUrl}${p}`);
    assert.equal(r.status, 200, p);
    assert.match(r.headers.get('content-type'), new RegExp(type), p);
  }
  const html = await (await fetch(`${broker.httpUrl}/`)).text();
  assert.doesNotMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, 'no inline scripts');
  assert.doesNotMatch(html, /\son[a-z]+=/i, 'no inline event handlers');
  assert.doesNotMatch(html, /\sstyle=/i, 'no inline styles');
  assert.match(html, /href="\/healthz"/);
  assert.match(html, /href="\/metrics"/);
});

test('without --web-root the broker finds the demo and /gale.js by itself', async () => {
  const b = new Broker(await freePort(), [], null);
  await b.start();
  try {
    for (const p of ['/', '/gale.js', '/app.js']) {
      const r = await fetch(`${b.httpUrl}${p}`);
      assert.equal(r.status, 200, p);
    }
  } finally {
    await b.stop();
  }
});

test('two tabs chat; the inspector shows another client; a broker restart is survived', { timeout: 120000 }, async () => {
  phase = 'chat';
  const alice = await openDemo('alice');
  const bob = await openDemo('bob');
  for (const [page, nick] of [[alice, 'alice'], [bob, 'bob']]) {
    await page.fill('#nick', nick);
    await page.dispatchEvent('#nick', 'change');
  }
  if (HAS_PRESENCE) {
    await waitFor(async () => (await alice.textContent('#online')) === '2 online', STEP, 'alice to see bob online');
  }

  await say(alice, 'Hi Bob, this goes through gale');
  await bob.locator('#messages .msg:not(.mine) .bubble', { hasText: 'Hi Bob, this goes through gale' }).waitFor({ timeout: STEP });
  await say(bob, 'Hallo Alice, Grüße!');
  await alice.locator('#messages .msg:not(.mine) .bubble', { hasText: 'Hallo Alice, Grüße!' }).waitFor({ timeout: STEP });
  assert.equal(await alice.locator('#messages .msg:not(.mine) .meta b').first().textContent(), 'bob');
  assert.equal(await alice.locator('#messages .msg.mine.pending').count(), 0, 'own message acknowledged');

  phase = 'inspector';
  // Subscribe to a new pattern through the form, then another client publishes.
  await alice.fill('#sub-pattern', 'sensors.*.temp');
  await alice.click('#sub-form button[type=submit]');
  await alice.locator('#subs .chip[data-pattern="sensors.*.temp"][data-state="live"]').waitFor({ timeout: STEP });
  await nodeClient.publish('sensors.kitchen.temp', { celsius: 21.5, ok: true });
  await nodeClient.publish('sensors.kitchen.humidity', { percent: 40 }); // not matched
  const row = alice.locator('#stream li[data-topic="sensors.kitchen.temp"]');
  await row.waitFor({ timeout: STEP });
  assert.match(await row.locator('.data').textContent(), /"celsius":21\.5/);
  assert.match(await row.locator('.t').textContent(), /^\d\d:\d\d:\d\d\.\d{3}$/);
  assert.equal(await alice.locator('#stream li[data-topic="sensors.kitchen.humidity"]').count(), 0);

  // The page's publish form reaches a client outside the browser.
  const got = [];
  await nodeClient.subscribe('demo.from-page', (data) => got.push(data));
  await alice.fill('#pub-topic', 'demo.from-page');
  await alice.fill('#pub-data', '{"hello": "from the page", "n": 3}');
  await alice.click('#pub-form button[type=submit]');
  await waitFor(() => got.length === 1, STEP, 'the page publish to arrive');
  assert.deepEqual(got[0], { hello: 'from the page', n: 3 });
  await alice.locator('#pub-msg.ok').waitFor({ timeout: STEP });
  // An invalid pattern and bad JSON are reported on the page, not thrown.
  await alice.fill('#pub-data', '{not json');
  await alice.click('#pub-form button[type=submit]');
  await alice.locator('#pub-msg.bad', { hasText: 'Not JSON' }).waitFor({ timeout: STEP });
  await alice.fill('#pub-data', '{"fixed": true}');
  await alice.fill('#pub-topic', 'demo.*');
  await alice.click('#pub-form button[type=submit]');
  await alice.locator('#pub-msg.bad', { hasText: 'bad_topic' }).waitFor({ timeout: STEP });
  await alice.fill('#pub-topic', 'demo.greeting');
  await alice.fill('#pub-data', '{"text": "Hello, gale!"}');

  // The rate counter counts what arrives.
  for (let i = 0; i < 20; i++) await nodeClient.publish(`demo.load.${i % 4}`, { i });
  await waitFor(async () => Number(await alice.textContent('#received')) >= 20, STEP, 'the received counter');

  phase = 'restart';
  await broker.stop(); // closes every connection with 1001
  await alice.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
  await bob.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
  await sleep(500);
  await broker.start(); // same port
  await alice.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
  await bob.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
  await waitFor(() => nodeClient.state === 'open', STEP, 'the node client to reconnect');
  phase = 'after restart';

  // Resubscribed: the inspector and the chat receive again.
  await nodeClient.publish('sensors.garden.temp', { celsius: 12.25 });
  await alice.locator('#stream li[data-topic="sensors.garden.temp"]').waitFor({ timeout: STEP });
  // A restarted single node has lost its history (it lives in memory) and its epoch: the
  // chat cannot recover what it missed and reloads the room from the (empty) history.
  await alice.locator('#messages .sys.warn', { hasText: 'could not be recovered; reloaded the room' }).waitFor({ timeout: STEP });
  await say(bob, 'Still here after the restart');
  await alice.locator('#messages .msg .bubble', { hasText: 'Still here after the restart' }).waitFor({ timeout: STEP });

  // A little traffic for the screenshot.
  await nodeClient.publish('sensors.attic.temp', { celsius: 27.75, battery: 0.82 });
  await nodeClient.publish('demo.orders.created', { id: 'ord_1042', total: 59.9, items: 3 });
  await say(alice, 'Nice, it reconnected and resubscribed by itself');
  await bob.locator('#messages .bubble', { hasText: 'by itself' }).waitFor({ timeout: STEP });
  await sleep(1200); // let the rate chart tick
  await fullShot(alice, 1360, 'demo.png');
  await fullShot(bob, 390, 'demo-phone.png');

  // No horizontal scrolling on a phone.
  const overflow = await bob.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the phone layout is ${overflow}px too wide`);

  // Console errors: none, except the browser's own report of WebSocket connections that
  // failed while the broker was down.
  const unexpected = problems.filter((p) => !expectedProblem(p));
  assert.deepEqual(unexpected, [], JSON.stringify(unexpected, null, 2));
});

test('first start: a fresh page shows no console errors', async () => {
  phase = 'fresh';
  const before = problems.length;
  const page = await openDemo('fresh');
  await sleep(1200); // the RTT and the rate chart fill in
  await page.screenshot({ path: path.join(ARTIFACTS, 'first-start.png') });
  await page.close();
  assert.deepEqual(problems.slice(before), []);
});

test('a room shows its last lines; what a cut-off page missed arrives once', { timeout: 120000 }, async () => {
  phase = 'history';
  const before = problems.length;
  const hb = new Broker(await freePort(), SERVED);
  await hb.start();
  // The page reaches the broker through a TCP proxy that can cut its connections, refuse
  // new ones, or swallow what the broker sends (acks get lost).
  const proxy = await new TcpProxy(hb.port).start();
  const carol = connect(hb.wsUrl, { minDelay: 50, maxDelay: 300 });
  let page;
  try {
    // (a) Lines published before the page opens: it shows the last 50, oldest first, as
    // other people's lines, with their stream offsets, then says it joined.
    const texts = Array.from({ length: 55 }, (_, i) => `earlier line ${i + 1}`);
    const acks = await publishLines(carol, 'lobby', 'carol', texts);
    assert.deepEqual(acks.map((a) => a.off), texts.map((_, i) => i + 1));
    await publishLines(carol, 'attic', 'carol', ['up in the attic', 'still up here']);
    const rec = recorder(carol, 'chat.lobby.msg');
    await rec.ready;

    page = await openDemo('dave', `http://127.0.0.1:${proxy.port}`);
    await page.fill('#nick', 'dave');
    await page.dispatchEvent('#nick', 'change');
    let shown = await chatLines(page);
    assert.deepEqual(shown.map((l) => l.text), texts.slice(5));
    assert.deepEqual(shown.map((l) => l.off), texts.slice(5).map((_, i) => i + 6));
    assert.ok(shown.every((l) => !l.mine && !l.pending && l.from === 'carol'), JSON.stringify(shown[0]));
    const kinds = await page.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => li.className));
    assert.equal(kinds.indexOf('sys'), 50, `the join line comes after the history: ${kinds}`);
    assert.match((await sysLines(page))[0], /^You joined chat\.lobby as /);

    // Another room shows its own lines; back in the lobby, its last 50 again.
    await page.fill('#room', 'attic');
    await page.click('#room-form button[type=submit]');
    await page.locator('#messages .sys', { hasText: 'You joined chat.attic' }).waitFor({ timeout: STEP });
    assert.deepEqual((await chatLines(page)).map((l) => l.text), ['up in the attic', 'still up here']);
    await page.fill('#room', 'lobby');
    await page.click('#room-form button[type=submit]');
    await page.locator('#messages .sys', { hasText: 'You joined chat.lobby' }).waitFor({ timeout: STEP });
    assert.deepEqual((await chatLines(page)).map((l) => l.text), texts.slice(5));

    // Live lines both ways; the page's own line is acknowledged with its offset.
    await publishLines(carol, 'lobby', 'carol', ['a live line']);
    assert.equal((await onceShown(page, 'a live line')).off, 56);
    await say(page, 'hello from dave');
    assert.equal((await onceShown(page, 'hello from dave', { mine: true })).off, 57);
    assert.equal(rec.times('hello from dave'), 1);

    // (b) The page is cut off (its connection dropped, new ones refused): a line published
    // meanwhile, and one the page queued meanwhile, each show once after the reconnect,
    // recovered from the broker's history (no reload).
    phase = 'offline';
    proxy.refusing = true;
    proxy.cut();
    await page.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
    await publishLines(carol, 'lobby', 'carol', ['published while you were away']);
    await say(page, 'typed while offline');
    await page.locator('#messages .msg.mine.pending .bubble', { hasText: 'typed while offline' }).waitFor({ timeout: STEP });
    await sleep(1000);
    proxy.refusing = false;
    await page.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
    assert.equal((await onceShown(page, 'published while you were away')).off, 58);
    assert.equal((await onceShown(page, 'typed while offline', { mine: true })).off, 59);
    await page.locator('#messages .sys', { hasText: 'Reconnected: 1 missed message recovered' }).waitFor({ timeout: STEP });
    assert.equal(rec.times('typed while offline'), 1);

    // The page's publish reaches the broker but its ack is lost with the connection:
    // gale.js sends it again (same mid) after the reconnect; the broker delivers it once,
    // and the page shows it once, acknowledged.
    phase = 'ack lost';
    proxy.deaf = true;
    await say(page, 'my ack got lost');
    await waitFor(() => rec.times('my ack got lost') === 1, STEP, 'the broker to deliver the line');
    await sleep(300);
    assert.equal(await page.locator('#messages .msg.mine.pending .bubble', { hasText: 'my ack got lost' }).count(), 1);
    proxy.cut();
    proxy.deaf = false;
    await page.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
    assert.equal((await onceShown(page, 'my ack got lost', { mine: true })).off, 60);
    assert.equal(rec.times('my ack got lost'), 1);
    phase = 'history done';

    // Everything once, in stream order; nothing needed a reload; the page's position is the
    // stream's top.
    shown = await chatLines(page);
    const offs = shown.map((l) => l.off);
    assert.deepEqual(offs, Array.from({ length: offs.length }, (_, i) => 60 - offs.length + 1 + i), JSON.stringify(shown.map((l) => [l.off, l.text])));
    assert.equal(await page.locator('#messages .sys.warn').count(), 0, (await sysLines(page)).join(' | '));
    const top = await carol.history('chat.lobby.msg', { limit: 1 });
    assert.deepEqual(await page.evaluate(() => window.gale.position('chat.lobby.msg')), { ep: top.ep, off: 60 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'history.png') });
  } finally {
    await page?.close();
    await carol.close();
    await proxy.stop();
    await hb.stop();
  }
  const unexpected = problems.slice(before).filter((p) => !expectedProblem(p));
  assert.deepEqual(unexpected, [], JSON.stringify(unexpected, null, 2));
});

test('presence: two tabs see each other in the member list; a closed tab leaves it', {
  timeout: 120000,
  skip: !HAS_PRESENCE && 'gale-broker has no --presence',
}, async () => {
  phase = 'presence';
  const before = problems.length;
  const pb = new Broker(await freePort(), SERVED);
  await pb.start();
  const fred = connect(pb.wsUrl, { minDelay: 50, maxDelay: 300 });
  let ann;
  let ben;
  try {
    ann = await openDemo('ann', pb.httpUrl);
    await setNick(ann, 'ann');
    await membersShown(ann, ['ann (you)'], 'ann alone');
    assert.equal(await ann.textContent('#online'), '1 online');

    // ben comes (with the nick the page drew), then takes his own: ann sees both.
    ben = await openDemo('ben', pb.httpUrl);
    await setNick(ben, 'ben');
    await membersShown(ann, ['ann (you)', 'ben'], "ann's list");
    await membersShown(ben, ['ben (you)', 'ann'], "ben's list");
    for (const page of [ann, ben]) {
      await waitFor(async () => (await page.textContent('#online')) === '2 online', STEP, '2 online');
    }
    await ann.locator('#messages .sys', { hasText: / is now ben$/ }).waitFor({ timeout: STEP });
    assert.ok((await sysLines(ann)).some((l) => / joined$/.test(l)), (await sysLines(ann)).join(' | '));

    // The entries are the tabs' connections (the one marked "you" is the tab's own), and
    // the broker lists the nicks each gave as its info.
    const annConn = await ann.evaluate(() => window.gale.conn);
    const benConn = await ben.evaluate(() => window.gale.conn);
    assert.match(annConn, /^[0-9a-f]{16}-\d+$/);
    assert.deepEqual((await memberList(ann)).map((m) => m.conns), [[annConn], [benConn]]);
    assert.deepEqual((await memberList(ben)).map((m) => m.conns), [[benConn], [annConn]]);
    const seen = await fred.presence('chat.lobby.msg');
    assert.equal(seen.count, 2);
    assert.deepEqual(seen.members.map((m) => [m.conn, m.info?.nick]).sort(), [[annConn, 'ann'], [benConn, 'ben']].sort());

    // They chat; the lines come with the names the lists show.
    await say(ben, 'hi ann, I can see you in the list');
    await ann.locator('#messages .msg:not(.mine) .bubble', { hasText: 'I can see you in the list' }).waitFor({ timeout: STEP });
    await ann.screenshot({ path: path.join(ARTIFACTS, 'presence.png') });

    // A broker restart: it forgets everyone; the tabs come back on new connections,
    // subscribed again with their nicks, and read the list again.
    phase = 'presence restart';
    await pb.stop();
    await ann.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
    await pb.start();
    for (const page of [ann, ben]) await page.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
    await membersShown(ann, ['ann (you)', 'ben'], "ann's list after the restart");
    await membersShown(ben, ['ben (you)', 'ann'], "ben's list after the restart");
    const annConn2 = await ann.evaluate(() => window.gale.conn);
    const benConn2 = await ben.evaluate(() => window.gale.conn);
    assert.notEqual(annConn2, annConn);
    assert.deepEqual((await memberList(ann)).map((m) => m.conns), [[annConn2], [benConn2]]);
    assert.equal(await ann.textContent('#online'), '2 online');
    phase = 'presence';

    // ben closes his tab: ann sees him leave.
    await ben.close();
    ben = null;
    await membersShown(ann, ['ann (you)'], "ann's list once ben left");
    assert.equal(await ann.textContent('#online'), '1 online');
    await ann.locator('#messages .sys', { hasText: /^ben left$/ }).waitFor({ timeout: STEP });
    assert.equal((await fred.presence('chat.lobby.msg')).count, 1);
  } finally {
    await ben?.close();
    await ann?.close();
    await fred.close();
    await pb.stop();
  }
  const unexpected = problems.slice(before).filter((p) => !expectedProblem(p));
  assert.deepEqual(unexpected, [], JSON.stringify(unexpected, null, 2));
});

test('cluster: a killed broker; the page recovers on the other one, or on it restarted', { timeout: 150000, skip: clusterSkip }, async () => {
  phase = 'cluster';
  const before = problems.length;
  const redis = await new Redis().start();
  const node = (id) => ['--redis', redis.url, '--node-id', id, ...SERVED];
  const a = new Broker(await freePort(), node('e2e-a'));
  const b = new Broker(await freePort(), node('e2e-b'));
  let proxy;
  let erin;
  const pages = [];
  const open = async (name, base) => {
    const page = await openDemo(name, base);
    pages.push(page);
    await page.fill('#nick', name);
    await page.dispatchEvent('#nick', 'change');
    return page;
  };
  try {
    await a.start();
    await b.start();
    // alice's page comes from broker A through a TCP proxy: the load balancer, which sends
    // her reconnect to B once A is dead. bob's page is on B.
    proxy = await new TcpProxy(a.port).start();
    erin = connect(b.wsUrl, { minDelay: 50, maxDelay: 300 });
    await publishLines(erin, 'lobby', 'erin', ['before anyone came', 'published on B']);
    const rec = recorder(erin, 'chat.lobby.msg');
    await rec.ready;

    // The room's history is the cluster's (in Redis): alice, on A, sees what was published
    // on B.
    const alice = await open('alice', `http://127.0.0.1:${proxy.port}`);
    assert.equal(await alice.textContent('#node'), 'e2e-a');
    assert.deepEqual((await chatLines(alice)).map((l) => [l.text, l.off]), [['before anyone came', 1], ['published on B', 2]]);
    const bob = await open('bob', b.httpUrl);
    assert.equal(await bob.textContent('#node'), 'e2e-b');
    if (HAS_PRESENCE) {
      // Presence is the cluster's: alice (on A) and bob (on B) see each other.
      const shows = (page, name) => async () => (await memberList(page)).some((m) => m.text === name && !m.you);
      await waitFor(shows(alice, 'bob'), STEP, 'alice to list bob');
      await waitFor(shows(bob, 'alice'), STEP, 'bob to list alice');
      assert.ok((await memberList(alice)).some((m) => m.text === 'alice (you)'));
    }
    await say(alice, 'hi from A');
    await onceShown(bob, 'hi from A');

    // A dies (SIGKILL) with alice on it. While she is away bob says something; she types
    // a line. The balancer then sends her to B: she recovers there (same epoch, Redis has
    // the stream) and sees each line once.
    phase = 'cluster kill';
    proxy.refusing = true;
    await killBroker(a);
    await alice.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
    await say(bob, 'said while alice was away');
    await onceShown(bob, 'said while alice was away', { mine: true });
    await say(alice, 'queued by alice while away');
    proxy.targetPort = b.port;
    proxy.refusing = false;
    await alice.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
    assert.equal(await alice.textContent('#node'), 'e2e-b');
    await onceShown(alice, 'said while alice was away');
    await onceShown(alice, 'queued by alice while away', { mine: true });
    await onceShown(bob, 'queued by alice while away');
    await alice.locator('#messages .sys', { hasText: 'Reconnected: 1 missed message recovered' }).waitFor({ timeout: STEP });
    assert.equal(rec.times('queued by alice while away'), 1);

    // A comes back (same port, same Redis); carol's page is on it. A is killed again, bob
    // says something, A restarts: carol reconnects to it and recovers the line, once.
    phase = 'cluster restart';
    await a.start();
    const carol = await open('carol', a.httpUrl);
    assert.equal(await carol.textContent('#node'), 'e2e-a');
    assert.deepEqual((await chatLines(carol)).map((l) => l.text), ['before anyone came', 'published on B', 'hi from A',
      'said while alice was away', 'queued by alice while away']);
    await killBroker(a);
    await carol.locator('#status[data-state="connecting"]').waitFor({ timeout: STEP });
    await say(bob, 'said while A was down');
    await onceShown(bob, 'said while A was down', { mine: true });
    await a.start();
    await carol.locator('#status[data-state="open"]').waitFor({ timeout: STEP });
    assert.equal(await carol.textContent('#node'), 'e2e-a');
    await onceShown(carol, 'said while A was down');
    await carol.locator('#messages .sys', { hasText: 'Reconnected: 1 missed message recovered' }).waitFor({ timeout: STEP });
    await onceShown(alice, 'said while A was down');
    phase = 'cluster done';

    // Every page: each line once, in stream order, no reload.
    for (const [name, page] of [['alice', alice], ['bob', bob], ['carol', carol]]) {
      const offs = (await chatLines(page)).map((l) => l.off);
      assert.deepEqual(offs, [1, 2, 3, 4, 5, 6], `${name}: ${offs}`);
      assert.equal(await page.locator('#messages .sys.warn').count(), 0, `${name}: ${(await sysLines(page)).join(' | ')}`);
    }
    assert.deepEqual(rec.got, ['hi from A', 'said while alice was away', 'queued by alice while away', 'said while A was down']);
    await alice.screenshot({ path: path.join(ARTIFACTS, 'cluster.png') });
  } finally {
    for (const p of pages) await p.close();
    await erin?.close();
    await proxy?.stop();
    await a.stop();
    await b.stop();
    await redis.stop();
  }
  const unexpected = problems.slice(before).filter((p) => !expectedProblem(p));
  assert.deepEqual(unexpected, [], JSON.stringify(unexpected, null, 2));
});

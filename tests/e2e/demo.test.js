// The demo page served by a real gale-broker, in Debian's headless Chromium driven by
// playwright-core: two tabs chat, the inspector shows what another client publishes,
// the page survives a broker restart, no console errors, screenshots as artifacts.
//
//   GALE_BROKER=build/gale-broker node --experimental-websocket --test tests/e2e/
//   GALE_E2E_ARTIFACTS=dir (default tests/e2e/artifacts), GALE_CHROMIUM=/usr/bin/chromium
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Broker, freePort, sleep, waitFor } from '../../clients/js/test/broker.js';
import { connect } from '../../web/gale.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.GALE_E2E_ARTIFACTS || path.join(HERE, 'artifacts');
const CHROMIUM = process.env.GALE_CHROMIUM || '/usr/bin/chromium';
const STEP = 15000; // ms for any one thing the page must show

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

async function openDemo(name) {
  const page = await context.newPage();
  watch(page, name);
  await page.goto(`${broker.httpUrl}/`, { timeout: STEP });
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
  broker = new Broker(await freePort());
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
  await waitFor(async () => (await alice.textContent('#online')) === '2 online', STEP, 'alice to see bob online');

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
  const expected = (p) => p.phase === 'restart' && /WebSocket connection to .* failed/.test(p.text);
  const unexpected = problems.filter((p) => !expected(p));
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

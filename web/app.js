// The demo console served at / by gale-broker: connection status, a topic inspector
// (subscribe, live stream, publish, message rate) and a chat room. Uses only /gale.js.
import { connect, VERSION } from '/gale.js';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const MAX_ROWS = 300; // rows kept in the live stream
const MAX_CHAT = 200; // chat messages kept
const PRESENCE_EVERY = 10000; // ms between presence beats
const PRESENCE_TTL = 30000; // a tab not heard of for this long is gone

// A token in the page's own URL (?token=...) is passed on to the broker.
const token = new URLSearchParams(location.search).get('token') || undefined;
const gale = connect(undefined, { token });
window.gale = gale; // for the console, and for tests

const wsUrl = gale.url.replace(/\?.*$/, '');
$('ws-url').textContent = wsUrl;
$('version').textContent = `gale.js ${VERSION}`;
$('empty-cmd').textContent = `python3 -m websockets ${wsUrl}\n> {"op":"pub","topic":"demo.hello","data":{"n":1}}`;

// ---- connection status ------------------------------------------------------------

const status = $('status');
const statusText = $('status-text');
let retryTimer = null;

function showState(state, detail) {
  status.dataset.state = state;
  clearInterval(retryTimer);
  if (state === 'open') {
    statusText.textContent = 'Connected';
    status.title = `node ${detail.node}, connection ${detail.conn}`;
    $('node').textContent = detail.node;
    $('node').title = `connection ${detail.conn}, max message ${detail.max_msg} bytes`;
    measureRtt();
  } else if (state === 'connecting') {
    const { attempt = 0, delay = 0 } = detail || {};
    if (attempt === 0) {
      statusText.textContent = 'Connecting…';
    } else {
      const until = Date.now() + delay;
      const tick = () => {
        const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        statusText.textContent = s > 0 ? `Reconnecting in ${s}s…` : 'Reconnecting…';
      };
      tick();
      retryTimer = setInterval(tick, 250);
    }
    $('rtt').textContent = '–';
  } else {
    statusText.textContent = 'Closed';
  }
}
gale.on('state', showState);
showState(gale.state, {});

async function measureRtt() {
  if (gale.state !== 'open') return;
  try {
    $('rtt').textContent = String(await gale.ping());
  } catch {
    /* not connected: shown by the status */
  }
}
setInterval(measureRtt, 5000);

// ---- message rate -----------------------------------------------------------------

let received = 0;
let published = 0;
let thisSecond = 0;
const history = new Array(60).fill(0); // messages per second, oldest first

function countReceived() {
  received++;
  thisSecond++;
}

function countPublished() {
  published++;
  $('published').textContent = published.toLocaleString();
}

const spark = $('spark');
function drawSpark() {
  const ctx = spark.getContext('2d');
  const dpr = window.devicePixelRatio || 1;
  const w = spark.clientWidth;
  const h = spark.clientHeight;
  if (spark.width !== Math.round(w * dpr)) {
    spark.width = Math.round(w * dpr);
    spark.height = Math.round(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(4, ...history);
  const step = w / (history.length - 1);
  const y = (v) => h - 3 - (v / max) * (h - 8);
  const css = getComputedStyle(document.documentElement);
  const c1 = css.getPropertyValue('--accent-2').trim() || '#0ea5e9';
  const c2 = css.getPropertyValue('--accent').trim() || '#4f46e5';
  const grad = ctx.createLinearGradient(0, 0, w, 0);
  grad.addColorStop(0, c1);
  grad.addColorStop(1, c2);
  ctx.beginPath();
  history.forEach((v, i) => (i ? ctx.lineTo(i * step, y(v)) : ctx.moveTo(0, y(v))));
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.strokeStyle = grad;
  ctx.stroke();
  ctx.lineTo(w, h);
  ctx.lineTo(0, h);
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = grad;
  ctx.fill();
  ctx.globalAlpha = 1;
}

setInterval(() => {
  history.shift();
  history.push(thisSecond);
  // The rate shown is the mean of the last 5 seconds.
  const mean = history.slice(-5).reduce((a, b) => a + b, 0) / 5;
  $('rate').textContent = mean >= 10 || mean === 0 ? String(Math.round(mean)) : mean.toFixed(1);
  thisSecond = 0;
  $('received').textContent = received.toLocaleString();
  drawSpark();
}, 1000);
drawSpark();
window.addEventListener('resize', drawSpark);

// ---- topic inspector --------------------------------------------------------------

const stream = $('stream');
const streamEmpty = $('stream-empty');
const streamCount = $('stream-count');
const subsList = $('subs');
const subs = new Map(); // pattern -> { off, chip, count }
let shown = 0;
let paused = false;
let held = 0;

function hueOf(topic) {
  const seg = topic.split('.')[0];
  let h = 0;
  for (let i = 0; i < seg.length; i++) h = (h * 31 + seg.charCodeAt(i)) % 360;
  return (h + 200) % 360;
}

function clock(d) {
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function dataText(data, pretty) {
  if (data instanceof Uint8Array) return `<${data.length} bytes> ${Array.from(data.slice(0, 32), (b) => b.toString(16).padStart(2, '0')).join(' ')}`;
  try {
    return JSON.stringify(data, null, pretty ? 2 : undefined) ?? String(data);
  } catch {
    return String(data);
  }
}

function updateStreamCount() {
  const n = shown.toLocaleString();
  streamCount.textContent = shown ? `${n} message${shown === 1 ? '' : 's'}${paused && held ? ` · ${held} held` : ''}` : 'no messages yet';
  streamEmpty.hidden = stream.childElementCount > 0;
}

function addRow(topic, data) {
  shown++;
  const li = el('li', 'fresh');
  li.append(el('span', 't', clock(new Date())));
  const t = el('span', 'topic', topic);
  t.title = topic;
  t.style.setProperty('--hue', hueOf(topic));
  li.append(t);
  const d = el('span', 'data', dataText(data, false));
  li.append(d);
  li.dataset.topic = topic;
  li.gData = data;
  stream.prepend(li);
  while (stream.childElementCount > MAX_ROWS) stream.lastElementChild.remove();
  updateStreamCount();
}

stream.addEventListener('click', (ev) => {
  const li = ev.target.closest('li');
  if (!li) return;
  li.classList.toggle('open');
  li.querySelector('.data').textContent = dataText(li.gData, li.classList.contains('open'));
});

function onInspected(pattern) {
  return (data, topic) => {
    countReceived();
    const s = subs.get(pattern);
    if (s) s.chip.querySelector('.count').textContent = String(++s.count);
    if (paused) {
      held++;
      updateStreamCount();
      return;
    }
    addRow(topic, data);
  };
}

function setMsg(id, text, kind) {
  const m = $(id);
  m.textContent = text;
  m.className = `form-msg ${kind || ''}`;
}

async function inspect(pattern) {
  if (subs.has(pattern)) return;
  const chip = el('li', 'chip');
  chip.dataset.pattern = pattern;
  chip.dataset.state = 'pending';
  chip.append(el('span', 'pat', pattern), el('span', 'count', '0'));
  const x = el('button', '', '×');
  x.type = 'button';
  x.title = `Unsubscribe from ${pattern}`;
  x.setAttribute('aria-label', `Unsubscribe from ${pattern}`);
  chip.append(x);
  subsList.append(chip);
  const entry = { chip, count: 0, off: null };
  subs.set(pattern, entry);
  x.addEventListener('click', async () => {
    subs.delete(pattern);
    chip.remove();
    if (entry.off) await entry.off().catch(() => {});
  });
  try {
    entry.off = await gale.subscribe(pattern, onInspected(pattern));
    chip.dataset.state = 'live';
    setMsg('sub-msg', '');
  } catch (e) {
    subs.delete(pattern);
    chip.remove();
    setMsg('sub-msg', `Could not subscribe to ${pattern}: ${e.code || e.message}`, 'bad');
    throw e;
  }
}

$('sub-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('sub-pattern');
  const pattern = input.value.trim();
  if (!pattern) return;
  inspect(pattern).then(
    () => input.select(),
    () => {},
  );
});

$('pause').addEventListener('click', () => {
  paused = !paused;
  const b = $('pause');
  b.setAttribute('aria-pressed', String(paused));
  b.textContent = paused ? 'Resume' : 'Pause';
  if (!paused) held = 0;
  updateStreamCount();
});

$('clear').addEventListener('click', () => {
  stream.replaceChildren();
  shown = 0;
  held = 0;
  updateStreamCount();
});

$('pub-data').addEventListener('input', () => $('pub-data').removeAttribute('aria-invalid'));

$('pub-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const topic = $('pub-topic').value.trim();
  const raw = $('pub-data').value.trim();
  let data;
  try {
    data = raw === '' ? null : JSON.parse(raw);
  } catch (e) {
    $('pub-data').setAttribute('aria-invalid', 'true');
    setMsg('pub-msg', `Not JSON: ${e.message}`, 'bad');
    return;
  }
  const t0 = performance.now();
  setMsg('pub-msg', gale.state === 'open' ? 'Publishing…' : 'Queued until the broker is back…');
  try {
    await gale.publish(topic, data);
    countPublished();
    setMsg('pub-msg', `✓ Published to ${topic}, acked in ${Math.max(1, Math.round(performance.now() - t0))} ms`, 'ok');
  } catch (e) {
    setMsg('pub-msg', `✗ ${e.code ? `${e.code}: ` : ''}${e.message.replace(/^[a-z_]+: /, '')}`, 'bad');
  }
});

// ---- chat -------------------------------------------------------------------------
//
// A room is two exact topics: chat.ROOM.msg (the lines; a broker started with
// --history 'chat.*.msg=...' keeps the last ones, so gale.js recovers what a reconnect
// missed and history() shows a newcomer the last lines) and chat.ROOM.presence (beats).

const ADJ = ['swift', 'calm', 'brisk', 'bright', 'bold', 'keen', 'lucky', 'quiet', 'sunny', 'witty'];
const NOUN = ['otter', 'falcon', 'lynx', 'heron', 'fox', 'badger', 'gecko', 'orca', 'puffin', 'wren'];
const HISTORY_LINES = 50; // lines of the room's history shown on joining
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const me = Math.random().toString(36).slice(2, 10); // this tab
const messages = $('messages');
const peers = new Map(); // tab id -> last seen (ms)
// The room joined: { name, msgTopic, presenceTopic, ep (epoch of the lines shown),
//   seen: Set of 'ep:off' shown, own: Map mid -> li of this tab's lines, loading (history
//   asked: live lines wait in buffer), loads (counter, a newer load wins), offs
//   (unsubscribe functions), missed (lines replayed since the last disconnect) }
let room = null;
let nextMid = 0;

// Per tab (sessionStorage), so that two tabs are two people.
const nickInput = $('nick');
nickInput.value = sessionStorage.getItem('gale.nick') || `${pick(ADJ)}-${pick(NOUN)}`;
sessionStorage.setItem('gale.nick', nickInput.value);
nickInput.addEventListener('change', () => {
  nickInput.value = nickInput.value.trim() || `${pick(ADJ)}-${pick(NOUN)}`;
  sessionStorage.setItem('gale.nick', nickInput.value);
  beat();
});

function scrollChat() {
  messages.scrollTop = messages.scrollHeight;
}
window.addEventListener('resize', scrollChat);

function sysLine(text, kind) {
  messages.append(el('li', kind ? `sys ${kind}` : 'sys', text));
  trimChat();
  scrollChat();
}

function trimChat() {
  while (messages.childElementCount > MAX_CHAT) messages.firstElementChild.remove();
}

/** Adds a chat line: a line being sent (pending) at the end; any other line before this
 * tab's lines still pending (they come after it in the room once they get there). */
function chatLine(m, mine, sending = false) {
  const li = el('li', `msg${mine ? ' mine' : ''}${sending ? ' pending' : ''}`);
  const meta = el('span', 'meta');
  meta.append(el('b', '', mine ? 'you' : String(m.from || 'someone')));
  meta.append(document.createTextNode(` · ${clock(new Date(m.ts || Date.now())).slice(0, 5)}`));
  li.append(meta, el('span', 'bubble', String(m.text ?? '')));
  li.dataset.id = m.mid || '';
  messages.insertBefore(li, sending ? null : messages.querySelector('li.msg.pending'));
  trimChat();
  scrollChat();
  return li;
}

const posKey = (ep, off) => `${ep ?? ''}:${off}`;

/** Records the stream position of a line shown in room r (the ack's or the message's). */
function placeLine(r, li, ep, off) {
  if (!Number.isSafeInteger(off) || li.dataset.off || r !== room || !li.isConnected) return;
  li.dataset.off = String(off);
  r.seen.add(posKey(ep ?? r.ep, off));
}

/** One of this tab's lines reached the broker (its ack, or its echo, came). */
function markSent(r, li, ep, off) {
  li.classList.remove('pending', 'failed');
  li.querySelector('.note')?.remove();
  placeLine(r, li, ep, off);
}

/** Shows a line of the room once: a position already shown is a duplicate; this tab's
 * own line (by its mid) is marked sent rather than shown again. */
function showLine(r, data, { ep, off } = {}) {
  const placed = Number.isSafeInteger(off);
  if (placed && r.seen.has(posKey(ep, off))) return;
  if (ep !== undefined) r.ep = ep;
  if (data.tab === me && data.mid !== undefined) {
    const li = r.own.get(String(data.mid));
    if (li?.isConnected) {
      markSent(r, li, ep, off);
      return;
    }
    // Not on screen (the room was reloaded): shown from here, as any line.
    if (li) markSent(r, li);
  }
  const li = chatLine(data, data.tab === me);
  if (data.tab === me && data.mid !== undefined) r.own.set(String(data.mid), li);
  if (placed) placeLine(r, li, ep, off);
  return li;
}

function onChatMsg(data, topic, pos) {
  const r = room;
  if (!r || topic !== r.msgTopic || !data || typeof data !== 'object') return;
  if (r.loading) {
    r.buffer.push([data, pos]); // shown after the history, which may hold it too
    return;
  }
  if (gale.state === 'open' && data.tab !== me) {
    peers.set(data.tab, Date.now()); // live, not replayed after a reconnect
    updateOnline();
  }
  if (showLine(r, data, pos) && gale.state !== 'open') r.missed++;
}

/** (Re)loads room r from the broker's history: its last lines, this tab's lines not
 * acked yet, then intro(), then the lines that arrived meanwhile. */
async function loadRoom(r, intro) {
  const load = ++r.loads;
  r.loading = true;
  let hist;
  let error;
  try {
    hist = await gale.history(r.msgTopic, { limit: HISTORY_LINES });
  } catch (e) {
    error = e;
  }
  if (room !== r || load !== r.loads) return;
  messages.replaceChildren();
  r.seen.clear();
  if (hist) {
    r.ep = hist.ep;
    for (const m of hist.messages) {
      if (m.data && typeof m.data === 'object') showLine(r, m.data, { ep: hist.ep, off: m.off });
    }
  }
  for (const li of r.own.values()) {
    if (!li.isConnected && (li.classList.contains('pending') || li.classList.contains('failed'))) {
      messages.append(li);
    }
  }
  trimChat();
  if (error) sysLine(`Could not load the last lines of ${r.msgTopic}: ${error.code || error.message}`, 'warn');
  intro?.();
  r.loading = false;
  for (const [data, pos] of r.buffer.splice(0)) showLine(r, data, pos);
  scrollChat();
}

/** After a reconnect (gale.js subscribed again with the last position seen). */
function onRecover(r, { recovered, ep }) {
  if (room !== r) return;
  const missed = r.missed;
  r.missed = 0;
  if (recovered) {
    if (missed) sysLine(`Reconnected: ${missed} missed message${missed === 1 ? '' : 's'} recovered`);
  } else if (ep === undefined) {
    // No history for this topic on this broker: nothing to reload from.
    sysLine(`Reconnected: lines sent meanwhile are lost (the broker keeps no history of ${r.msgTopic})`, 'warn');
  } else {
    loadRoom(r, () => sysLine('Reconnected: some messages could not be recovered; reloaded the room', 'warn'));
  }
}
gale.on('disconnect', () => {
  if (room) room.missed = 0;
});

function updateOnline() {
  const now = Date.now();
  for (const [id, seen] of peers) if (now - seen > PRESENCE_TTL) peers.delete(id);
  const n = peers.size + 1;
  $('online').textContent = `${n} online`;
}
setInterval(updateOnline, 2000);

function onPresence(data, topic) {
  if (!room || topic !== room.presenceTopic || !data || typeof data !== 'object') return;
  if (data.tab === me) return;
  const known = peers.has(data.tab);
  if (data.left) {
    peers.delete(data.tab);
    sysLine(`${data.nick} left`);
  } else {
    peers.set(data.tab, Date.now());
    if (!known && data.hello) sysLine(`${data.nick} joined`);
  }
  updateOnline();
}

function beat(extra = {}) {
  if (!room || gale.state !== 'open') return;
  gale.publish(room.presenceTopic, { nick: nickInput.value, ...extra, tab: me }).catch(() => {});
}
setInterval(beat, PRESENCE_EVERY);

async function joinRoom(name) {
  if (room && name === room.name) return;
  const old = room;
  if (old) {
    beat({ left: true });
    room = null;
    await Promise.all(old.offs.map((off) => off().catch(() => {})));
  }
  const r = {
    name, msgTopic: `chat.${name}.msg`, presenceTopic: `chat.${name}.presence`, ep: undefined,
    seen: new Set(), own: new Map(), loading: true, buffer: [], loads: 0, offs: [], missed: 0,
  };
  room = r;
  peers.clear();
  messages.replaceChildren();
  try {
    r.offs.push(await gale.subscribe(r.msgTopic, onChatMsg, { onRecover: (info) => onRecover(r, info) }));
    r.offs.push(await gale.subscribe(r.presenceTopic, onPresence));
  } catch (e) {
    if (room === r) {
      room = null;
      sysLine(`Could not join chat.${name}: ${e.code || e.message}`, 'warn');
    }
    await Promise.all(r.offs.map((off) => off().catch(() => {})));
    return;
  }
  if (room !== r) {
    // Another room was chosen meanwhile.
    await Promise.all(r.offs.map((off) => off().catch(() => {})));
    return;
  }
  await loadRoom(r, () => {
    sysLine(`You joined chat.${name} as ${nickInput.value}`);
    sysLine('Open this page in another tab or on your phone and say hi.');
  });
  if (room !== r) return;
  beat({ hello: true });
  updateOnline();
}

$('room-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = $('room').value.trim();
  if (name && !/[.\s*>]/.test(name)) joinRoom(name);
});

$('chat-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('chat-text');
  const text = input.value.trim();
  const r = room;
  if (!text || !r) return;
  input.value = '';
  // The mid in the data lets this tab know its own lines; the same mid on the publish
  // makes the broker deliver the line once even when gale.js sends it again after a
  // reconnect.
  const mid = `${me}-${Date.now().toString(36)}-${(nextMid++).toString(36)}`;
  const m = { from: nickInput.value, text, ts: Date.now(), tab: me, mid };
  const li = chatLine(m, true, true);
  r.own.set(mid, li);
  try {
    const ack = await gale.publish(r.msgTopic, m, { mid });
    countPublished();
    markSent(r, li, ack.ep, ack.off);
  } catch (e) {
    if (!li.classList.contains('pending')) return; // its echo came: delivered after all
    li.classList.remove('pending');
    li.classList.add('failed');
    li.querySelector('.meta').append(el('span', 'note', ` · not sent (${e.code})`));
  }
});

// Announce the join again after every reconnect (the subscriptions themselves are
// renewed by gale.js).
gale.on('open', () => beat({ hello: true }));
window.addEventListener('pagehide', () => beat({ left: true }));

// ---- start ------------------------------------------------------------------------

updateStreamCount();
inspect('demo.>').catch(() => {});
inspect('chat.>').catch(() => {});
joinRoom('lobby');

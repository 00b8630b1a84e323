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

const ADJ = ['swift', 'calm', 'brisk', 'bright', 'bold', 'keen', 'lucky', 'quiet', 'sunny', 'witty'];
const NOUN = ['otter', 'falcon', 'lynx', 'heron', 'fox', 'badger', 'gecko', 'orca', 'puffin', 'wren'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const me = Math.random().toString(36).slice(2, 10); // this tab
const messages = $('messages');
const peers = new Map(); // tab id -> last seen (ms)
let room = null;
let roomOff = null;

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

function sysLine(text) {
  messages.append(el('li', 'sys', text));
  trimChat();
  scrollChat();
}

function trimChat() {
  while (messages.childElementCount > MAX_CHAT) messages.firstElementChild.remove();
}

function chatLine(m, mine) {
  const li = el('li', `msg${mine ? ' mine' : ''}`);
  const meta = el('span', 'meta');
  meta.append(el('b', '', mine ? 'you' : String(m.from || 'someone')));
  meta.append(document.createTextNode(` · ${clock(new Date(m.ts || Date.now())).slice(0, 5)}`));
  li.append(meta, el('span', 'bubble', String(m.text ?? '')));
  li.dataset.id = m.mid || '';
  messages.append(li);
  trimChat();
  scrollChat();
  return li;
}

function updateOnline() {
  const now = Date.now();
  for (const [id, seen] of peers) if (now - seen > PRESENCE_TTL) peers.delete(id);
  const n = peers.size + 1;
  $('online').textContent = `${n} online`;
}
setInterval(updateOnline, 2000);

function onRoom(data, topic) {
  if (!data || typeof data !== 'object') return;
  const kind = topic.split('.').pop();
  if (kind === 'presence') {
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
  } else if (kind === 'msg') {
    if (data.tab === me) {
      const mine = messages.querySelector(`li.msg[data-id="${CSS.escape(String(data.mid))}"]`);
      if (mine) {
        mine.classList.remove('pending');
        return;
      }
    }
    peers.set(data.tab, Date.now());
    updateOnline();
    chatLine(data, data.tab === me);
  }
}

function beat(extra = {}) {
  if (!room || gale.state !== 'open') return;
  gale.publish(`chat.${room}.presence`, { nick: nickInput.value, ...extra, tab: me }).catch(() => {});
}
setInterval(beat, PRESENCE_EVERY);

async function joinRoom(name) {
  if (name === room) return;
  if (roomOff) {
    beat({ left: true });
    await roomOff().catch(() => {});
    roomOff = null;
  }
  room = name;
  peers.clear();
  messages.replaceChildren();
  try {
    roomOff = await gale.subscribe(`chat.${name}.*`, onRoom);
  } catch (e) {
    sysLine(`Could not join chat.${name}: ${e.code || e.message}`);
    return;
  }
  sysLine(`You joined chat.${name} as ${nickInput.value}`);
  sysLine('Open this page in another tab or on your phone and say hi.');
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
  if (!text || !room) return;
  input.value = '';
  const m = { from: nickInput.value, text, ts: Date.now(), tab: me, mid: `${me}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}` };
  const li = chatLine(m, true);
  li.classList.add('pending');
  try {
    await gale.publish(`chat.${room}.msg`, m);
    countPublished();
  } catch (e) {
    li.classList.remove('pending');
    li.classList.add('failed');
    li.querySelector('.meta').append(document.createTextNode(` · not sent (${e.code})`));
  }
});

// Announce the join again after every reconnect (the subscription itself is renewed by
// gale.js).
gale.on('open', () => beat({ hello: true }));
window.addEventListener('pagehide', () => beat({ left: true }));

// ---- start ------------------------------------------------------------------------

updateStreamCount();
inspect('demo.>').catch(() => {});
inspect('chat.>').catch(() => {});
joinRoom('lobby');

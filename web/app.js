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
const MAX_MEMBERS = 60; // names shown in a room's member list
const RENAME_WINDOW = 1500; // ms: a leave followed by a join of the same connection is a rename

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
// A room is one exact topic, chat.ROOM.msg: its lines (a broker started with --history
// 'chat.*.msg=...' keeps the last ones, so gale.js recovers what a reconnect missed and
// history() shows a newcomer the last lines) and, on a broker started with --presence
// 'chat.*.msg', who is in it: every connection subscribed to the topic is a member; this
// tab subscribes with presence (join/leave events, gale.js keeps the list) and, on a
// broker without tokens, with info {nick} (with tokens the nick comes from the token's
// gale.info claim, or its sub).

const ADJ = ['swift', 'calm', 'brisk', 'bright', 'bold', 'keen', 'lucky', 'quiet', 'sunny', 'witty'];
const NOUN = ['otter', 'falcon', 'lynx', 'heron', 'fox', 'badger', 'gecko', 'orca', 'puffin', 'wren'];
const HISTORY_LINES = 50; // lines of the room's history shown on joining
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const me = Math.random().toString(36).slice(2, 10); // this tab
const messages = $('messages');
const membersList = $('members');
// The room joined: { name, msgTopic, ep (epoch of the lines shown), seen: Set of 'ep:off'
//   shown, own: Map mid -> li of this tab's lines, loading (history asked: live lines
//   wait in buffer), loads (counter, a newer load wins), off (unsubscribe function of the
//   room's topic), missed (lines replayed since the last disconnect), presence (true: the
//   broker has presence for the room; false: it has not; undefined: not known yet), nick
//   (the info its subscription carries), busy (subscribing), leaving: Map conn -> a leave
//   not shown yet (it may be a rename) }
let room = null;
let nextMid = 0;

// Per tab (sessionStorage), so that two tabs are two people.
const nickInput = $('nick');
nickInput.value = sessionStorage.getItem('gale.nick') || `${pick(ADJ)}-${pick(NOUN)}`;
sessionStorage.setItem('gale.nick', nickInput.value);
nickInput.addEventListener('change', () => {
  nickInput.value = nickInput.value.trim() || `${pick(ADJ)}-${pick(NOUN)}`;
  sessionStorage.setItem('gale.nick', nickInput.value);
  if (room) syncMember(room);
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
  membersList.dataset.stale = 'true'; // until gale.js has read the list again
});

// ---- who is in the room (the broker's presence) ----

/** A member's name: the nick of its info, else the token's user, else a guest number. */
function nickOf(m) {
  const nick = m.info && typeof m.info.nick === 'string' ? m.info.nick.trim().slice(0, 24) : '';
  if (nick) return nick;
  if (typeof m.user === 'string' && m.user) return m.user.slice(0, 24);
  return `guest-${String(m.conn).split('-').pop()}`;
}

/** Shows the room's members (state: gale.js's {count, members, exact}; null: the broker
 * has no presence for the room; undefined: not known yet). Names are listed once (a
 * reconnecting tab can be listed twice for a while in a cluster: its old connection
 * leaves when its broker is known dead), this tab's own connection first, marked. */
function showMembers(r, state) {
  if (room !== r) return;
  const online = $('online');
  delete membersList.dataset.stale;
  if (state === null) {
    online.textContent = 'presence off';
    online.title = `The broker has no presence for ${r.msgTopic} (--presence 'chat.*.msg')`;
    membersList.replaceChildren();
    membersList.hidden = true;
    return;
  }
  online.title = `Connections subscribed to ${r.msgTopic} (the broker's presence)`;
  if (state === undefined) {
    online.textContent = '… online';
    membersList.replaceChildren();
    membersList.hidden = true;
    return;
  }
  online.textContent = `${state.count} online`;
  const names = new Map(); // name -> { you, conns }
  for (const m of state.members) {
    const name = nickOf(m);
    const e = names.get(name) || { you: false, conns: [] };
    e.you ||= m.conn === gale.conn;
    e.conns.push(m.conn);
    names.set(name, e);
  }
  const sorted = [...names].sort(([a, x], [b, y]) => Number(y.you) - Number(x.you) || a.localeCompare(b));
  const items = sorted.slice(0, MAX_MEMBERS).map(([name, e]) => {
    const li = el('li', e.you ? 'member you' : 'member', name);
    li.dataset.conn = e.conns.join(' ');
    li.title = e.conns.map((c) => `connection ${c}`).join('\n');
    if (e.you) li.append(el('small', '', ' (you)'));
    if (e.conns.length > 1) li.append(el('small', '', ` ×${e.conns.length}`));
    return li;
  });
  const unlisted = state.count - state.members.length + Math.max(0, sorted.length - MAX_MEMBERS);
  if (unlisted > 0) items.push(el('li', 'member more', `+${unlisted} more`));
  membersList.replaceChildren(...items);
  membersList.hidden = false;
}

/** Whether another connection with this member's name is in the room (a tab that came
 * back on a new connection, its old one not gone yet). */
function namesake(m) {
  const name = nickOf(m);
  return (gale.members(room.msgTopic)?.members || []).some((x) => x.conn !== m.conn && nickOf(x) === name);
}

function memberJoined(r, m) {
  if (room !== r) return;
  const name = nickOf(m);
  // A leave just before: the same connection with a new nick (its subscription made
  // again), or the same name on a new connection (a tab that reconnected).
  let conn = r.leaving.has(m.conn) ? m.conn : undefined;
  if (conn === undefined) conn = [...r.leaving].find(([, x]) => x.name === name)?.[0];
  if (conn !== undefined) {
    const left = r.leaving.get(conn);
    clearTimeout(left.timer);
    r.leaving.delete(conn);
    if (left.name !== name) sysLine(`${left.name} is now ${name}`);
    return;
  }
  if (!namesake(m)) sysLine(`${name} joined`);
}

function memberLeft(r, m) {
  if (room !== r) return;
  const name = nickOf(m);
  const timer = setTimeout(() => {
    r.leaving.delete(m.conn);
    if (room === r && !namesake(m)) sysLine(`${name} left`);
  }, RENAME_WINDOW);
  r.leaving.set(m.conn, { name, timer });
}

/** The options of the room's subscription: recovery, and presence unless the broker has
 * none for the room. */
function roomOptions(r, since) {
  const opts = { onRecover: (info) => onRecover(r, info) };
  if (since) opts.since = since;
  if (r.presence === false) return opts;
  opts.presence = true;
  opts.onPresence = (state) => showMembers(r, state);
  opts.onJoin = (m) => memberJoined(r, m);
  opts.onLeave = (m) => memberLeft(r, m);
  if (!token) opts.info = { nick: r.nick };
  return opts;
}

/** Subscribes the room's topic; with presence, or without on a broker that has none. */
async function subscribeRoom(r, since) {
  try {
    return await gale.subscribe(r.msgTopic, onChatMsg, roomOptions(r, since));
  } catch (e) {
    if (e.code !== 'bad_request' || r.presence === false) throw e;
    r.presence = false; // a broker without --presence for chat.*.msg: no member list
    showMembers(r, null);
    return gale.subscribe(r.msgTopic, onChatMsg, roomOptions(r, since));
  }
}

/** Makes the room's member info carry the current nick. A subscription's info is set
 * when it is made: unsubscribe, then subscribe again from the last position seen (the
 * broker replays what came in between; others see this tab leave and come back, shown as
 * a rename). When not connected: on the next 'open'. */
async function syncMember(r) {
  if (room !== r || r.busy || r.presence === false || token || gale.state !== 'open') return;
  if (r.off && r.nick === nickInput.value) return;
  r.busy = true;
  try {
    const since = gale.position(r.msgTopic) ?? undefined;
    if (r.off) {
      const off = r.off;
      r.off = null;
      await off().catch(() => {});
    }
    if (room !== r) return;
    r.nick = nickInput.value;
    const off = await subscribeRoom(r, since);
    if (room === r) r.off = off;
    else await off().catch(() => {});
  } catch (e) {
    if (room === r) sysLine(`Could not join chat.${r.name} again: ${e.code || e.message}`, 'warn');
  } finally {
    r.busy = false;
  }
  if (room === r && r.off && r.nick !== nickInput.value) syncMember(r); // changed meanwhile
}
gale.on('open', () => {
  if (room) syncMember(room);
});

async function joinRoom(name) {
  if (room && name === room.name) return;
  const old = room;
  if (old) {
    room = null;
    for (const { timer } of old.leaving.values()) clearTimeout(timer);
    if (old.off) {
      const off = old.off;
      old.off = null;
      await off().catch(() => {});
    }
  }
  const r = {
    name, msgTopic: `chat.${name}.msg`, ep: undefined, seen: new Set(), own: new Map(), loading: true,
    buffer: [], loads: 0, off: null, missed: 0, presence: undefined, nick: nickInput.value, busy: true,
    leaving: new Map(),
  };
  room = r;
  showMembers(r, undefined);
  messages.replaceChildren();
  try {
    const off = await subscribeRoom(r);
    if (room !== r) {
      // Another room was chosen meanwhile.
      await off().catch(() => {});
      return;
    }
    r.off = off;
    if (r.presence === undefined) r.presence = true;
  } catch (e) {
    if (room === r) {
      room = null;
      sysLine(`Could not join chat.${name}: ${e.code || e.message}`, 'warn');
    }
    return;
  } finally {
    r.busy = false;
  }
  await loadRoom(r, () => {
    sysLine(`You joined chat.${name} as ${nickInput.value}`);
    sysLine('Open this page in another tab or on your phone and say hi.');
  });
  syncMember(r); // the nick changed meanwhile
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

// ---- start ------------------------------------------------------------------------

updateStreamCount();
inspect('demo.>').catch(() => {});
inspect('chat.>').catch(() => {});
joinRoom('lobby');

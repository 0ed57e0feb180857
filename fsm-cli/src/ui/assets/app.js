// The page of `fsm ui`: everything it shows comes from the inspector's own server (the
// admin endpoint's answers, proxied, and one event stream); nothing is fetched elsewhere.
'use strict';

const $ = (selector) => document.querySelector(selector);

const page = {
  table: null,
  // "From\u0000Event\u0000To" -> transition index, to light the edge a decision took.
  edgeOf: new Map(),
  stream: null,
  machineStream: null,
  machine: null,
  paused: false,
  updates: 0,
  rows: 0,
  selectedState: null,
  stateAfter: null,
  showTimer: null,
};

const MAX_ROWS = 300;
const MAX_STEPS = 400;
// Where the sequence's lanes are, in percent of its width (see app.css's grid).
const LANE = { command: 10.9, timer: 32.6, effect: 54.3 };
const MACHINE_LANE = 65.2;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'style') node.setAttribute('style', v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  return q.toString();
}

async function api(op, params) {
  const response = await fetch(`/api/${op}?${query(params)}`);
  const body = await response.json();
  if (body && 'ok' in body) return body.ok;
  const e = body && body.error;
  const error = new Error(e ? `${e.kind}: ${e.message}` : response.statusText);
  error.kind = e && e.kind;
  throw error;
}

function problem(text) {
  const p = $('#problem');
  p.hidden = !text;
  p.textContent = text || '';
}

function micros(us) {
  if (us === undefined || us === null) return '–';
  if (us < 1000) return `${us.toFixed(0)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function millis(ms) {
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function rate(perSecond) {
  if (!(perSecond > 0)) return '';
  if (perSecond >= 100) return `${perSecond.toFixed(0)}/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}/s`;
  return `${(perSecond * 60).toFixed(1)}/min`;
}

function count(n) {
  return Number(n).toLocaleString('en-US');
}

// ---- the statechart ----

async function loadChart() {
  const [hello, table, svg] = await Promise.all([
    api('hello'),
    api('table'),
    fetch('/statechart.svg').then((r) => r.text()),
  ]);
  page.table = table;
  document.title = `fsm inspector · ${hello.machine}`;
  $('#machine-type').textContent = hello.machine;
  $('#chart').innerHTML = svg;
  table.transitions.forEach((t, j) => page.edgeOf.set(`${t.from}\u0000${t.event}\u0000${t.to}`, j));
  const states = $('#state-names');
  for (const s of table.states) states.append(el('option', { value: s.name }));
  const events = $('#event-names');
  for (const e of new Set(table.transitions.map((t) => t.event))) events.append(el('option', { value: e }));
  for (const g of document.querySelectorAll('.statechart .state')) {
    const open = () => openState(g.dataset.state);
    g.addEventListener('click', open);
    g.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
  }
}

function drawCounts(states) {
  if (!states || !page.table) return;
  const byName = new Map(states.states.map((c) => [c.state, c.machines]));
  const total = states.total || 0;
  page.table.states.forEach((s, i) => {
    const n = byName.get(s.name) || 0;
    const text = $(`#count-${i}`);
    if (!text) return;
    text.textContent = `${count(n)} machine${n === 1 ? '' : 's'}`;
    text.dataset.count = String(n);
    const g = $(`#state-${i}`);
    const share = total > 0 ? n / total : 0;
    g.style.setProperty('--share', share.toFixed(3));
    g.classList.toggle('occupied', n > 0);
    g.classList.toggle('dark', share > 0.55);
  });
  $('#machines-total').textContent = count(total);
  const other = states.states.filter((c) => !c.declared && c.machines > 0);
  const note = $('#other-states');
  const parts = other.map((c) => `${c.state}: ${count(c.machines)}`);
  if (states.unreadable > 0) parts.push(`unreadable: ${count(states.unreadable)}`);
  note.hidden = parts.length === 0;
  note.textContent = parts.length ? `Stored in states this type does not declare: ${parts.join(', ')}` : '';
}

function drawRates(rates, window) {
  if (!rates) return;
  const busiest = Math.max(0, ...rates);
  rates.forEach((r, j) => {
    const t = $(`#rate-${j}`);
    if (!t) return;
    t.textContent = r > 0 ? rate(r) : '';
    const g = $(`#edge-${j}`);
    g.classList.toggle('active', r > 0);
    const width = r > 0 && busiest > 0 ? 1.6 + 3 * Math.sqrt(r / busiest) : 1.4;
    g.style.setProperty('--w', width.toFixed(2));
    g.setAttribute('data-rate', r.toFixed(3));
  });
  $('#chart-panel h2 small').textContent =
    `machines per state now · committed transitions per second over the last ${window >= 59 ? 'minute' : `${Math.max(1, Math.round(window))} s`}`;
}

function flash(entry) {
  if (!entry.to || entry.outcome !== 'committed') return;
  const j = page.edgeOf.get(`${entry.from}\u0000${entry.event}\u0000${entry.to}`);
  if (j === undefined) return;
  const g = $(`#edge-${j}`);
  if (!g || g.classList.contains('flash')) return;
  g.classList.add('flash');
  setTimeout(() => g.classList.remove('flash'), 500);
}

// ---- the poller's readings ----

function onStats(s) {
  page.updates += 1;
  document.body.dataset.updates = String(page.updates);
  problem(s.error ? `The admin endpoint did not answer: ${s.error}` : '');
  drawCounts(s.states);
  drawRates(s.transition_rates, s.rate_window_s);
  if (s.total) drawMetrics(s);
  drawHealth(s);
}

function drawMetrics(s) {
  const t = s.total;
  const c = t.counts;
  $('#uptime').textContent = millis(s.uptime_ms);
  $('#decided-rate').textContent = s.decided_per_sec.toFixed(s.decided_per_sec < 10 ? 1 : 0);
  const queued = s.queued.reduce((a, b) => a + b, 0);
  $('#queued').textContent = count(queued);
  $('#e2e-p99').textContent = micros(t.end_to_end.p99_us);
  const shards = $('#shards');
  shards.replaceChildren(...s.queued.map((q, i) => el('div', { class: 'shard' }, el('b', {}, count(q)), el('span', {}, `queued, shard ${i}`))));
  const rows = [['wait', t.wait], ['apply', t.apply], ['persist', t.persist], ['end to end', t.end_to_end]];
  $('#latency').replaceChildren(...rows.map(([name, l]) => el('tr', {},
    el('td', {}, name), el('td', {}, micros(l.p50_us)), el('td', {}, micros(l.p95_us)),
    el('td', {}, micros(l.p99_us)), el('td', {}, micros(l.max_us)))));
  const shown = [
    ['submitted', c.submitted], ['committed', c.committed], ['duplicate', c.duplicate],
    ['rejected', c.rejected], ['expired', c.expired], ['dumped', c.dumped],
    ['delegated', c.delegated], ['timers fired', c.timers_fired], ['fed back', c.fed_back],
    ['deferred now', c.deferred], ['effects owed', c.owed], ['full', c.full],
  ];
  $('#counts').replaceChildren(...shown.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', {}, count(v || 0)))));
  const ring = s.trace_window;
  $('#ring').textContent = ring
    ? (ring.complete_since_ms === null
      ? `The trace ring (${count(ring.capacity)} decisions a shard) holds every decision so far.`
      : `The trace ring keeps the last ${count(ring.capacity)} decisions of each shard: ${count(ring.overwritten)} overwritten, complete since ${millis(ring.complete_since_ms)} after start.`)
    : '';
}

function drawHealth(s) {
  const q = $('#quarantined');
  $('#quarantined-count').textContent = s.quarantined.length ? `(${s.quarantined.length})` : '';
  if (s.quarantined.length === 0) q.replaceChildren(el('li', { class: 'none' }, 'none'));
  else q.replaceChildren(...s.quarantined.map((m) => el('li', {}, idButton(m.machine), ` ${m.cause}`)));
  const w = $('#workers');
  if (s.workers.length === 0) {
    w.replaceChildren(el('tr', {}, el('td', { colspan: 8, class: 'none' }, 'no effect workers')));
  } else {
    w.replaceChildren(...s.workers.map((x) => el('tr', {},
      el('td', {}, x.worker), el('td', {}, count(x.effects)), el('td', {}, count(x.errors)),
      el('td', {}, count(x.panics)), el('td', {}, count(x.restarts)), el('td', {}, count(x.retries)),
      el('td', {}, count(x.parked)), el('td', { class: x.escalated ? 'escalated' : '' }, x.escalated ? 'ESCALATED' : ''))));
  }
  $('#escalations').replaceChildren(...s.escalations.map((e) => el('li', { class: 'escalated' },
    `worker ${e.worker} escalated ${millis(e.at_ms)} after start (more than ${e.max_restarts} restarts in ${millis(e.within_ms)}): ${e.failure}. `,
    el('span', { class: 'note' }, `Restart it with fsm restart-worker SOCKET ${e.worker}.`))));
}

// ---- the trace ----

function idButton(id) {
  return el('button', { type: 'button', class: 'id', onclick: () => openMachine(id) }, id);
}

function transition(e) {
  // A duplicate is answered with its first outcome, in whatever state the machine is now.
  if (e.outcome === 'duplicate') return `${e.event} again, in ${e.from} (first took it to ${e.to})`;
  const by = e.handled_by ? ` (taken by ${e.handled_by})` : '';
  return e.to ? `${e.from} --${e.event}--> ${e.to}${by}` : `${e.from} --${e.event}--> ·`;
}

function traceRow(e) {
  return el('tr', { class: 'entry', dataset: { machine: e.machine, outcome: e.outcome, event: e.event } },
    el('td', {}, (e.at_ms / 1000).toFixed(3)),
    el('td', {}, idButton(e.machine)),
    el('td', {}, transition(e)),
    el('td', {}, e.source || 'command'),
    el('td', {}, el('span', { class: `outcome ${e.outcome}` }, e.outcome)),
    el('td', {}, e.effects || ''),
    el('td', {}, micros(e.end_to_end_us)));
}

function addEntries(entries) {
  const body = $('#trace');
  for (const e of entries) flash(e);
  if (page.paused) return;
  const rows = entries.slice(-MAX_ROWS).reverse().map(traceRow);
  body.prepend(...rows);
  while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
  page.rows += entries.length;
  document.body.dataset.rows = String(page.rows);
}

function filters() {
  const f = new FormData($('#filters'));
  return {
    machine: f.get('machine').trim(),
    state: f.get('state').trim(),
    event: f.get('event').trim(),
    outcome: f.get('outcome'),
    rate: f.get('rate'),
  };
}

async function follow() {
  const f = filters();
  if (page.stream) page.stream.close();
  $('#trace').replaceChildren();
  $('#dropped').hidden = true;
  try {
    const earlier = await api('trace', { machine: f.machine, state: f.state, event: f.event, outcome: f.outcome, limit: 100 });
    addEntries(earlier);
  } catch (e) {
    problem(`The trace could not be read: ${e.message}`);
  }
  const stream = new EventSource(`/events?${query(f)}`);
  page.stream = stream;
  const link = $('#link');
  stream.onopen = () => { link.textContent = 'live'; link.className = 'link up'; };
  stream.onerror = () => { link.textContent = 'reconnecting'; link.className = 'link down'; };
  stream.addEventListener('stats', (m) => onStats(JSON.parse(m.data)));
  stream.addEventListener('entries', (m) => addEntries(JSON.parse(m.data)));
  stream.addEventListener('dropped', (m) => {
    const d = JSON.parse(m.data);
    const p = $('#dropped');
    p.hidden = false;
    p.textContent = `${count(d.dropped)} decisions not shown in the last second: ${count(d.rate_limited)} over this page's ${count(d.max_per_sec)} a second, ${count(d.overrun)} gone from the trace ring before they were read.`;
  });
  stream.addEventListener('error', (m) => {
    if (m.data) problem(`The event stream stopped: ${JSON.parse(m.data).message}`);
  });
}

// ---- the machines in a state ----

async function openState(name, after) {
  page.selectedState = name;
  for (const g of document.querySelectorAll('.statechart .state')) g.classList.toggle('selected', g.dataset.state === name);
  const panel = $('#state-panel');
  panel.hidden = false;
  $('#state-name').textContent = name;
  const list = $('#state-machines');
  if (!after) list.replaceChildren();
  try {
    const page_ = await api('machines', { state: name, after, limit: 100 });
    if (!after && page_.ids.length === 0) list.append(el('li', { class: 'none' }, 'none stored'));
    list.append(...page_.ids.map((id) => el('li', {}, idButton(id))));
    const more = $('#state-more');
    more.hidden = !page_.next;
    more.onclick = () => openState(name, page_.next);
  } catch (e) {
    list.replaceChildren(el('li', { class: 'none' }, e.message));
  }
}

// ---- one machine ----

async function openMachine(id) {
  page.machine = id;
  const panel = $('#machine-panel');
  panel.hidden = false;
  $('#machine-id').textContent = id;
  $('#sequence').replaceChildren();
  await refreshMachine();
  try {
    const [history, ring] = await Promise.all([api('trace', { machine: id }), api('trace_window')]);
    if (page.machine !== id) return;
    for (const e of history) addStep(e);
    const note = $('#history-note');
    note.hidden = ring.complete_since_ms === null;
    note.textContent = ring.complete_since_ms === null ? '' :
      `Decisions before ${millis(ring.complete_since_ms)} after start are gone from the trace ring; older history is not shown.`;
  } catch (e) {
    problem(`The machine's history could not be read: ${e.message}`);
  }
  if (page.machineStream) page.machineStream.close();
  const stream = new EventSource(`/events?${query({ machine: id, stats: '0', rate: 1000 })}`);
  page.machineStream = stream;
  stream.addEventListener('entries', (m) => {
    for (const e of JSON.parse(m.data)) addStep(e);
    clearTimeout(page.showTimer);
    page.showTimer = setTimeout(refreshMachine, 300);
  });
  panel.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
}

async function refreshMachine() {
  const id = page.machine;
  if (!id) return;
  try {
    const m = await api('show', { machine: id });
    if (page.machine !== id) return;
    $('#machine-state').textContent = m.state;
    $('#machine-within').textContent = m.superstates && m.superstates.length ? ` (in ${m.superstates.join(', in ')})` : '';
    $('#machine-seq').textContent = m.seq === null ? 'not stored yet' : `#${m.seq}`;
    $('#machine-value').textContent = m.value;
    const now = Date.now();
    const when = (ms) => {
      const d = ms - now;
      return d >= 0 ? `in ${millis(d)}` : `${millis(-d)} ago`;
    };
    $('#machine-timers').replaceChildren(...(m.timers.length ? m.timers.map((t) => el('li', {},
      `${t.kind} fires ${when(t.deadline_ms)}${t.event ? ` with ${t.event}` : ''} (armed for ${millis(t.after_ms)})`))
      : [el('li', { class: 'none' }, 'none')]));
    $('#machine-owed').replaceChildren(...(m.owed.length ? m.owed.map((o) => el('li', {},
      el('code', {}, o.key),
      ` owed ${when(o.owed_since_ms).replace('ago', '')}, ${o.attempts} failed attempt${o.attempts === 1 ? '' : 's'}`,
      o.running ? ', running now' : (o.next_attempt_ms ? `, next attempt ${when(o.next_attempt_ms)}` : ', next attempt now')))
      : [el('li', { class: 'none' }, 'none')]));
    $('#machine-keys').replaceChildren(...(m.keys.length ? m.keys.map((k) => el('li', {},
      el('code', {}, k.key), ` → snapshot #${k.seq}${k.transition ? `: ${k.transition}` : ''}`))
      : [el('li', { class: 'none' }, 'none')]));
  } catch (e) {
    if (e.kind === 'not_found') {
      $('#machine-state').textContent = 'not stored';
      $('#machine-value').textContent = '';
    } else {
      problem(`The machine could not be shown: ${e.message}`);
    }
  }
}

// A decision as a row of the sequence: an arrow from where the command came from to the
// machine, what the machine did, and the effects it sent on.
function addStep(e) {
  if (e.machine !== page.machine) return;
  const seq = $('#sequence');
  const source = e.source || 'command';
  const from = LANE[source] ?? LANE.command;
  const step = el('div', { class: 'step', dataset: { outcome: e.outcome, source } },
    el('span'), el('span'), el('span'), el('span'),
    el('div', { class: 'arrow', style: `left:${from}%;width:${MACHINE_LANE - from}%` }),
    el('div', { class: 'call', style: `left:${from}%` }, e.event),
    el('div', { class: 'result' },
      el('span', { class: `outcome ${e.outcome}` }, e.outcome), ' ',
      e.outcome === 'duplicate' ? `in ${e.from}, answered as before` : (e.to ? `${e.from} → ${e.to}` : `in ${e.from}`), ' ',
      el('span', { class: 'at' }, `${(e.at_ms / 1000).toFixed(3)} s`)));
  seq.append(step);
  // Entering a state with a state timeout arms it (the table says so); a handler's own
  // timers show under "armed timers" below.
  const entered = e.outcome === 'committed' && e.to !== e.from && page.table
    ? page.table.states.find((s) => s.name === e.to) : null;
  if (entered && entered.timeout) {
    const [ms, event] = entered.timeout;
    seq.append(el('div', { class: 'step armed' },
      el('span'), el('span'), el('span'), el('span'),
      el('div', { class: 'arrow back', style: `left:${LANE.timer}%;width:${MACHINE_LANE - LANE.timer}%` }),
      el('div', { class: 'call', style: `left:${LANE.timer}%` }, `arms ${millis(ms)} → ${event}`)));
  }
  if (e.effects > 0) {
    seq.append(el('div', { class: 'step emitted' },
      el('span'), el('span'), el('span'), el('span'),
      el('div', { class: 'arrow back', style: `left:${LANE.effect}%;width:${MACHINE_LANE - LANE.effect}%` }),
      el('div', { class: 'call', style: `left:${LANE.effect}%` }, `${e.effects} effect${e.effects === 1 ? '' : 's'}`)));
  }
  while (seq.children.length > MAX_STEPS) seq.firstElementChild.remove();
  seq.parentElement.scrollTop = seq.parentElement.scrollHeight;
}

function closeMachine() {
  page.machine = null;
  if (page.machineStream) page.machineStream.close();
  page.machineStream = null;
  $('#machine-panel').hidden = true;
}

// ---- start ----

async function start() {
  $('#filters').addEventListener('submit', (e) => { e.preventDefault(); follow(); });
  $('#pause').addEventListener('click', () => {
    page.paused = !page.paused;
    $('#pause').textContent = page.paused ? 'Resume' : 'Pause';
  });
  $('#machine-close').addEventListener('click', closeMachine);
  try {
    await loadChart();
  } catch (e) {
    problem(`The kernel's table could not be read: ${e.message}`);
    return;
  }
  await follow();
}

start();

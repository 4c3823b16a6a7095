// cnnlab explore: the page. Plain JS, no libraries; every request goes to the server that served it.
'use strict';

const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  info: null,          // /api/info: runs, class names, colour bars
  pixels: null,        // the current 28×28 input (base64 of 784 bytes), as the network saw it
  drawn: false,        // anything on the canvas since the last clear
  pending: null,       // the latest update asked for while one was in flight (latest wins)
  busy: false,
  attackBusy: false,
};

// ---- small DOM helpers (no innerHTML with data; styles only through CSSOM, for the CSP) ----
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') el.textContent = v; else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c) el.append(c);
  return el;
}
function pct(p) {
  if (p >= 0.9995) return '>99.9%';
  if (p < 0.0005) return p > 0 ? '<0.1%' : '0%';
  return (100 * p).toFixed(p >= 0.1 ? 1 : 2).replace(/\.?0+$/, '') + '%';
}
// Two probabilities with enough decimals that they read differently (occlusion maps of a
// confident network live between 99.990% and 99.999%).
function pctPair(a, b) {
  const d = Math.abs(a - b) * 100;
  const dec = d > 0 ? Math.min(4, Math.max(1, Math.ceil(-Math.log10(d)) + 1)) : 1;
  return [(100 * a).toFixed(dec) + '%', (100 * b).toFixed(dec) + '%'];
}
function img(src, cls, alt, width) {
  const el = h('img', { src, class: cls, alt: alt || '' });
  if (width) el.style.width = width + 'px';
  return el;
}
function setCells(id, cells) {
  const root = $(id);
  root.replaceChildren(...cells);
}
function runHeading(i) {
  const r = state.info.runs[i];
  return state.info.runs.length > 1 ? h('h4', { text: r.label }) : null;
}
function className(k) { return state.info ? state.info.class_names[k] : String(k); }

function message(text, kind) {
  const m = $('message');
  m.textContent = text || '';
  m.className = kind || '';
}

// ---- the server ----
async function api(method, url, body, contentType) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.body = body;
    opts.headers['Content-Type'] = contentType || 'application/json';
  }
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (e) {
    throw new Error('the cnnlab server does not answer (was it stopped?)');
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const detail = data && (data.error || (data.detail && JSON.stringify(data.detail)));
    throw new Error(detail || `HTTP ${resp.status}`);
  }
  return data;
}

// ---- drawing ----
const canvas = $('draw');
const ctx = canvas.getContext('2d');
let stroke = null;   // {x, y} of the last point while the pointer is down

function clearCanvas() {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  state.drawn = false;
}
function canvasPoint(ev) {
  const r = canvas.getBoundingClientRect();
  return { x: (ev.clientX - r.left) * canvas.width / r.width, y: (ev.clientY - r.top) * canvas.height / r.height };
}
function line(a, b) {
  // ~2 MNIST pixels wide once the digit's box is scaled to 20×20 (a 200-px digit → ×0.1)
  ctx.strokeStyle = '#fff';
  ctx.lineWidth = 20;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
}
canvas.addEventListener('pointerdown', (ev) => {
  ev.preventDefault();
  canvas.setPointerCapture(ev.pointerId);
  stroke = canvasPoint(ev);
  line(stroke, { x: stroke.x + 0.01, y: stroke.y });
  state.drawn = true;
});
canvas.addEventListener('pointermove', (ev) => {
  if (!stroke) return;
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of (events.length ? events : [ev])) {
    const p = canvasPoint(e);
    line(stroke, p);
    stroke = p;
  }
  update({ kind: 'draw', quick: true });   // live while drawing (no occlusion map: it costs
});                                           // hundreds of forward passes); one request in flight
function endStroke() {
  if (!stroke) return;
  stroke = null;
  update({ kind: 'draw' });
}
canvas.addEventListener('pointerup', endStroke);
canvas.addEventListener('pointercancel', endStroke);

// ---- updates: one request in flight; while it runs only the latest wish is kept ----
function update(req) {
  state.pending = req;
  if (!state.busy) pump();
}
async function pump() {
  state.busy = true;
  document.body.dataset.busy = '1';
  while (state.pending) {
    const req = state.pending;
    state.pending = null;
    try {
      await runUpdate(req);
    } catch (e) {
      message(req.kind === 'upload' ? `Upload rejected: ${e.message}` : e.message, 'error');
    }
  }
  state.busy = false;
  document.body.dataset.busy = '0';
}
function options() {
  const t = $('target').value;
  return { target: t === '' ? null : Number(t), patch: Number($('patch').value) };
}
async function runUpdate(req) {
  const t0 = performance.now();
  let res;
  if (req.kind === 'draw') {
    if (!state.drawn) return;
    res = await api('POST', '/api/analyze', JSON.stringify({ image: canvas.toDataURL('image/png'),
      source: 'drawing', occlusion: !req.quick, ...options() }));
  } else if (req.kind === 'pixels') {
    if (!state.pixels) return;
    res = await api('POST', '/api/analyze', JSON.stringify({ pixels: state.pixels, ...options() }));
  } else if (req.kind === 'test') {
    res = await api('POST', '/api/analyze', JSON.stringify({ test: req.index, ...options() }));
  } else if (req.kind === 'upload') {
    const o = options();
    const q = `patch=${o.patch}` + (o.target === null ? '' : `&target=${o.target}`);
    res = await api('POST', `/api/upload?${q}`, req.file, 'application/octet-stream');
  }
  if (!res) return;
  render(res);
  const ms = performance.now() - t0;
  $('timing').textContent = `last update: ${ms.toFixed(0)} ms in the browser, ${(1000 * res.seconds).toFixed(0)} ms of it computing`;
  if (req.kind === 'upload') message(`${req.name}: preprocessed like MNIST (20×20 box, centred by mass)`, 'info');
  else if ($('message').className === 'error') message('');
}

// ---- rendering the analysis ----
function render(res) {
  state.last = res;
  state.pixels = res.input.pixels;
  const seen = $('seen');
  seen.src = res.input.png;
  seen.className = 'px';
  seen.hidden = false;
  $('seen-empty').hidden = true;
  const src = res.input;
  let caption = 'drawn on the canvas, cropped to a 20×20 box and centred by mass like MNIST';
  if (src.kind === 'test') {
    caption = `test image #${src.index} — true label ${className(src.label)}`;
    $('test-index').value = src.index;
  } else if (src.kind === 'upload') caption = 'uploaded photo, preprocessed like MNIST';
  else if (src.kind === 'pixels') caption = $('seen-caption').textContent;
  $('seen-caption').textContent = caption;
  $('attack').disabled = state.attackBusy;

  const chosen = options().target;
  setCells('probs', res.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
    h('p', { class: 'pred' }, 'predicts ', h('b', { text: className(r.pred), 'data-testid': `pred-${i}` }),
      ` with ${pct(r.probs[r.pred])}`),
    bars(r.probs, r.pred, chosen === null ? r.pred : chosen))));

  // While a stroke is being drawn only the cheap parts are updated; the occlusion map (hundreds
  // of forward passes) follows when the stroke ends, and is greyed out until then.
  $('sec-occlusion').classList.toggle('stale', !res.runs.every((r) => r.occlusion));
  if (res.runs.every((r) => r.occlusion)) {
    const stretch = $('stretch').checked;
    const fine = (o) => pctPair(o.min, o.max);
    setCells('occlusion', res.runs.map((r, i) => {
      const o = r.occlusion;
      const k = className(o.target);
      return h('div', { class: 'cell' }, runHeading(i), h('div', { class: 'occ' },
        h('figure', {}, img(res.input.png, 'px', 'input', 140), h('figcaption', { text: 'input' })),
        h('figure', {}, img(stretch ? o.png_stretched : o.png, 'px transparent', `occlusion map for class ${k}`, 140),
          img(state.info.occlusion_colorbar, 'colorbar', 'colour scale'),
          h('div', { class: 'cbar-labels' }, h('span', { text: stretch ? fine(o)[0] : '0' }), h('span', { text: stretch ? fine(o)[1] : '1' })),
          h('figcaption', { text: `P(${k}) with a ${o.patch}×${o.patch} grey patch centred on each pixel` })),
        h('div', { class: 'small occ-text' },
          h('p', { text: `Uncovered: P(${k}) = ${pctPair(o.base_prob, o.min)[0]}.` }),
          h('p', { text: `Lowest: ${pctPair(o.base_prob, o.min)[1]}, patch at row ${o.min_at[0]}, column ${o.min_at[1]} (top-left corner).` }),
          o.stroke_share === null ? h('p', { text: 'No position lowers it.' }) :
            h('p', { text: `${pct(o.stroke_share)} of the drop falls on the strokes, which cover ${pct(o.even_share)} of the positions.` }))));
    }));
  }

  const scale = { conv1: 2, pool1: 3, conv2: 3, pool2: 5 };
  setCells('features', res.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
    Object.entries(r.features).map(([name, f]) => {
      const [c, hh, ww] = f.shape;
      const el = h('figure', { class: 'layer' },
        img(f.png, 'px transparent', `${name} feature maps`, Math.min(8 * (ww + 1) - 1, 8 * (ww + 1)) * scale[name]),
        h('figcaption', { text: `${name}: ${c} maps of ${hh}×${ww} (each unit sees ${f.receptive_field}×${f.receptive_field} pixels); ` +
          `${f.active_channels} channels active, ${pct(f.active_fraction)} of units > 0, largest ${f.max.toFixed(2)}` }));
      return el;
    }))));
}

function bars(probs, top, chosen) {
  const W = 320, H = 150, L = 34, B = 22, T = 16;
  const bw = (W - L - 6) / probs.length;
  const y = (p) => T + (H - T - B) * (1 - p);
  const svg = s('svg', { class: 'bars', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
    'aria-label': 'class probabilities' });
  for (const t of [0, 0.5, 1]) {
    svg.append(s('line', { class: 'axis', x1: L - 4, x2: W - 4, y1: y(t), y2: y(t), 'stroke-dasharray': t === 0 ? '' : '2 3' }));
    svg.append(s('text', { x: L - 8, y: y(t) + 4, 'text-anchor': 'end', text: t.toFixed(1) }));
  }
  probs.forEach((p, k) => {
    const x = L + k * bw + 3;
    const cls = 'bar' + (k === top ? ' top' : '') + (k === chosen && chosen !== top ? ' chosen' : '');
    const r = s('rect', { class: cls, x, y: y(p), width: bw - 6, height: Math.max(0.5, y(0) - y(p)) });
    r.append(s('title', { text: `${className(k)}: ${pct(p)}` }));
    svg.append(r);
    svg.append(s('text', { x: x + (bw - 6) / 2, y: H - 6, 'text-anchor': 'middle', text: className(k).slice(0, 5) }));
    if (p >= 0.01) svg.append(s('text', { x: x + (bw - 6) / 2, y: y(p) - 3, 'text-anchor': 'middle', text: pct(p).replace('%', '') }));
  });
  return svg;
}

function tiles(rows, source) {
  const out = h('div', { class: 'tiles' });
  if (source) out.append(h('figure', { class: 'tile source' }, img(source.png, 'px', 'source digit'),
    h('figcaption', { text: source.caption })));
  for (const r of rows) {
    const hit = r.pred === r.target;
    out.append(h('figure', { class: 'tile' }, img(r.png, 'px', `generated for class ${r.target}`),
      h('figcaption', {}, `→ ${className(r.target)}`, h('br'),
        h('span', { class: hit ? 'hit' : 'miss', text: hit ? pct(r.target_prob) : `reads ${className(r.pred)}` }))));
  }
  return out;
}

// ---- static parts: layer table, filters; beliefs (computed on first request) ----
function renderInfo() {
  const info = state.info;
  document.documentElement.style.setProperty('--nruns', String(info.runs.length));
  document.body.classList.toggle('one-run', info.runs.length === 1);
  $('runs-title').textContent = info.runs.map((r) =>
    r.label + (r.test_accuracy != null ? ` — test accuracy ${(100 * r.test_accuracy).toFixed(2)}%` : '')).join('   |   ');
  const sel = $('target');
  info.class_names.forEach((n, k) => sel.append(h('option', { value: String(k), text: n })));
  const beta = $('beta');
  info.betas.forEach((b) => beta.append(h('option', { value: String(b), text: String(b), selected: b === info.beta })));

  setCells('filters', info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
    ['conv1', 'conv2'].map((name) => {
      const f = r.filters[name];
      const [o, c] = f.shape;
      const wpx = c === 1 ? 8 * 4 * 8 : 3 * (4 * c - 1);
      return h('figure', { class: 'layer' }, img(f.png, 'px transparent', `${name} filters`, wpx),
        h('figcaption', { text: `${name}: ${o} filters of ${f.shape.slice(1).join('×')}, weights within ±${f.vmax.toFixed(3)}; ` +
          'kernels by kind: ' + Object.entries(f.class_counts).map(([kk, v]) => `${kk} ${v}`).join(', ') }));
    }))));

  setCells('layers', info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i), layerTable(r.summary))));
}

function layerTable(summary) {
  const rows = (summary && summary.layers) || [];
  if (!rows.length) return h('p', { class: 'muted', text: 'no layer table' });
  const cols = [['name', 'layer'], ['kind', 'kind'], ['input_shape', 'input'], ['output_shape', 'output'],
    ['params', 'parameters'], ['neurons', 'neurons']];
  const fmt = (v) => Array.isArray(v) ? v.join('×') : (typeof v === 'number' ? v.toLocaleString('en') : String(v ?? ''));
  const p = summary.params, n = summary.neurons;
  const table = h('table', { class: 'layers' },
    h('thead', {}, h('tr', {}, cols.map(([, label]) => h('th', { text: label })))),
    h('tbody', {}, rows.map((row) => h('tr', { title: row.detail || '' }, cols.map(([k]) => h('td', { text: fmt(row[k]) })))),
      h('tr', { class: 'total' }, h('td', { text: 'total' }), h('td'), h('td'), h('td'),
        h('td', { text: fmt(p.total) }), h('td', { text: fmt(n.total) }))));
  return h('div', { class: 'table-wrap' }, table,
    h('p', { class: 'small', text: `parameters: conv ${fmt(p.conv)}, fully connected ${fmt(p.fc)}` +
      (p.batch_norm ? `, batch-norm ${fmt(p.batch_norm)}` : '') }),
    h('p', { class: 'small', text: `neurons: conv ${fmt(n.conv)}, fully connected ${fmt(n.fc)}` }),
    h('p', { class: 'small muted', text: summary.definitions ? summary.definitions.neuron : '' }));
}

async function loadBeliefs() {
  const cells = state.info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
    h('p', { class: 'spinner', text: 'computing class models and targeted fakes (first time only; cached in the run directory)…' })));
  setCells('beliefs', cells);
  await Promise.all(state.info.runs.map(async (r, i) => {
    try {
      const b = await api('GET', `/api/beliefs/${i}`);
      const fs = b.fake_source;
      cells[i].replaceChildren(...[runHeading(i),
        h('p', { class: 'small', text: 'Class models (from noise, C = logits[target]):' }),
        tiles(b.class_models),
        h('p', { class: 'small', text: `Targeted fakes of test image #${fs.index} (a ${className(fs.label)}):` }),
        tiles(b.fakes, { png: fs.png, caption: `source #${fs.index}` }),
        h('p', { class: 'small muted', text: b.cached ? 'from the cache in the run directory' : `computed in ${b.seconds} s and cached` }),
      ].filter(Boolean));
    } catch (e) {
      cells[i].replaceChildren(...[runHeading(i), h('p', { class: 'small muted', text: `not available: ${e.message}` })].filter(Boolean));
    }
  }));
}

async function attack() {
  if (!state.pixels || state.attackBusy) return;
  state.attackBusy = true;
  const btn = $('attack');
  btn.disabled = true;
  btn.textContent = 'attacking…';
  $('sec-attack').hidden = false;
  setCells('attack-out', state.info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
    h('p', { class: 'spinner', text: 'running gradient ascent on the image…' }))));
  try {
    const res = await api('POST', '/api/attack', JSON.stringify({ pixels: state.pixels, beta: Number($('beta').value) }));
    setCells('attack-out', res.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
      tiles(r.rows, { png: res.input.png, caption: 'your digit' }),
      h('p', { class: 'small muted', text: `β = ${r.params.beta}, ${r.params.steps} steps from ${r.params.init}; ${res.seconds} s` }))));
  } catch (e) {
    setCells('attack-out', [h('p', { class: 'small', text: `attack failed: ${e.message}` })]);
  } finally {
    state.attackBusy = false;
    btn.disabled = !state.pixels;
    btn.textContent = 'Make this digit read as every class';
  }
}

// ---- wiring ----
function wire() {
  $('clear').addEventListener('click', () => { clearCanvas(); message(''); });
  $('test-show').addEventListener('click', () => {
    const n = Number($('test-index').value);
    if (!Number.isInteger(n)) { message('the test image index must be a whole number', 'error'); return; }
    clearCanvas();
    update({ kind: 'test', index: n });
  });
  $('test-random').addEventListener('click', () => { clearCanvas(); update({ kind: 'test', index: 'random' }); });
  $('upload').addEventListener('change', (ev) => {
    const f = ev.target.files && ev.target.files[0];
    ev.target.value = '';                       // choosing the same file again fires again
    if (!f) return;
    if (f.size > state.info.limits.max_upload_bytes) {
      message(`Upload rejected: ${f.name} is larger than ${state.info.limits.max_upload_bytes / 1048576} MiB`, 'error');
      return;
    }
    clearCanvas();
    message(`reading ${f.name}…`, 'info');
    update({ kind: 'upload', file: f, name: f.name });
  });
  const patch = $('patch');
  patch.addEventListener('input', () => {
    $('patch-value').textContent = `${patch.value}×${patch.value}`;
    update({ kind: 'pixels' });
  });
  $('target').addEventListener('change', () => update({ kind: 'pixels' }));
  $('stretch').addEventListener('change', () => { if (state.last) render(state.last); });
  $('attack').addEventListener('click', attack);
}

async function start() {
  clearCanvas();
  wire();
  try {
    state.info = await api('GET', '/api/info');
  } catch (e) {
    message(`cannot load the runs: ${e.message}`, 'error');
    return;
  }
  renderInfo();
  document.body.dataset.busy = state.busy ? '1' : '0';
  document.body.dataset.ready = '1';
  loadBeliefs();
}
start();

// cnnlab explore: the page. Plain JS, no libraries. One implementation for two hosts: the
// standalone server (requests go over fetch to the server that served the page) and the notebook
// widget (cnnlab.widget: requests go to the Python kernel as the widget's custom messages).
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const BLOB_BRUSHES = 3;   // a drawing less than 3 brush widths across becomes a blob after cropping

// ---- transports: call(method, path, body) → the answer's JSON, or throws Error(message) ----
function fetchTransport() {
  return {
    async call(method, path, body) {
      const opts = { method, headers: {} };
      if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers['Content-Type'] = 'application/json'; }
      let resp;
      try { resp = await fetch(path, opts); } catch (e) { throw new Error('the cnnlab server does not answer (was it stopped?)'); }
      let data = null;
      try { data = await resp.json(); } catch (e) { /* not JSON */ }
      if (!resp.ok) throw new Error((data && (data.error || (data.detail && JSON.stringify(data.detail)))) || `HTTP ${resp.status}`);
      return data;
    },
  };
}
function widgetTransport(model, prefix) {
  // Request ids carry the mount's own prefix: two views of one widget share its messages.
  let next = 0;
  const waiting = new Map();
  model.on('msg:custom', (msg) => {
    const w = msg && waiting.get(msg.id);
    if (!w) return;
    waiting.delete(msg.id);
    if (msg.ok) w.resolve(msg.data); else w.reject(new Error(msg.error || 'the kernel did not answer'));
  });
  return {
    call(method, path, body) {
      const id = `${prefix}:${++next}`;
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject });
        model.send({ id, method, path, body: body === undefined ? null : body });
      });
    },
  };
}

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
  for (const [k, v] of Object.entries(attrs || {})) { if (k === 'text') el.textContent = v; else el.setAttribute(k, v); }
  for (const c of children.flat()) if (c) el.append(c);
  return el;
}
function pct(p) {
  if (p >= 0.9995) return '>99.9%';
  if (p < 0.0005) return p > 0 ? '<0.1%' : '0%';
  return (100 * p).toFixed(p >= 0.1 ? 1 : 2).replace(/\.?0+$/, '') + '%';
}
// Two probabilities with enough decimals that they read differently.
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

// A suffix for one mount's element ids that no other element in the document has: a notebook
// may show several explorers in one document, and a label's `for` must name its own input.
let mounts = 0;
function uniqueSuffix() {
  for (;;) {
    const suffix = `-x${++mounts}${Math.random().toString(36).slice(2, 8)}`;
    if (!document.querySelector(`[id$="${suffix}"]`)) return suffix;
  }
}

// ---- the app, mounted on one root element ----
// `suffix`: appended to every element id under `root` (and to every label's `for`); '' only for
// the standalone page, which is the one explorer in its document.
function mount(root, transport, suffix = '') {
  if (suffix) {
    root.querySelectorAll('[id]').forEach((el) => { el.id += suffix; });
    if (root.id) root.id += suffix;
    root.querySelectorAll('label[for], output[for]').forEach((el) =>
      el.setAttribute('for', el.getAttribute('for').split(' ').map((id) => id + suffix).join(' ')));
  }
  const $ = (id) => root.querySelector('#' + id + suffix);
  const api = (method, path, body) => transport.call(method, path, body);
  const state = { info: null, pixels: null, drawn: false, pending: null, busy: false, attackBusy: false,
    gen: 0, last: null, full: false, blob: null };

  const setCells = (id, cells) => $(id).replaceChildren(...cells);
  const runHeading = (i) => (state.info.runs.length > 1 ? h('h4', { text: state.info.runs[i].label }) : null);
  const className = (k) => (state.info ? state.info.class_names[k] : String(k));
  function message(text, kind) { const m = $('message'); m.textContent = text || ''; m.className = 'xp-message' + (kind ? ' ' + kind : ''); }
  function setBusy(b) { state.busy = b; root.dataset.busy = b ? '1' : '0'; }

  // ---- drawing ----
  const canvas = $('draw');
  const ctx = canvas.getContext('2d');
  let stroke = null;
  const brush = () => Number($('brush').value);
  function clearCanvas() { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height); state.drawn = false; }
  function canvasPoint(ev) {
    const r = canvas.getBoundingClientRect();
    return { x: (ev.clientX - r.left) * canvas.width / r.width, y: (ev.clientY - r.top) * canvas.height / r.height };
  }
  function line(a, b) {
    ctx.strokeStyle = '#fff'; ctx.lineWidth = brush(); ctx.lineCap = 'round'; ctx.lineJoin = 'round';
    ctx.beginPath(); ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y); ctx.stroke();
  }
  // The ink's extent on the canvas: MNIST preprocessing scales the drawing's box to 20×20, so a
  // drawing only a few brush widths across becomes a filled blob (a dot becomes a disc).
  function inkCheck() {
    const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) {
      if (d[4 * (y * canvas.width + x)] > 127) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
    }
    if (x1 < 0) return null;
    const extent = Math.max(x1 - x0 + 1, y1 - y0 + 1);
    return extent < BLOB_BRUSHES * brush() ? extent : null;
  }
  function showBlobWarning() {
    const ext = state.drawn ? inkCheck() : null;
    const w = $('warning');
    state.blob = ext;
    w.hidden = ext === null;
    if (ext !== null) {
      w.textContent = `This drawing is only ${ext} px across — under ${BLOB_BRUSHES} brush widths (${brush()} px). ` +
        'Scaled up to MNIST\'s 20×20 box it becomes a blob, so the prediction means little: draw bigger or use a thinner brush.';
    }
    refreshCues();
  }
  // The cue beside each prediction. Under the blob warning no margin makes a clear winner: the
  // cue then points at the warning instead of contradicting it.
  function cue(unsure) {
    if (state.blob !== null) return { cls: 'cue unsure', text: 'too small to read — see the warning' };
    return unsure ? { cls: 'cue unsure', text: 'unsure — may not be a digit' } : { cls: 'cue sure', text: 'clear winner' };
  }
  function refreshCues() {
    root.querySelectorAll('[data-testid^="cue-"]').forEach((el) => {
      const c = cue(el.dataset.unsure === '1');
      el.className = c.cls; el.textContent = c.text;
    });
  }
  canvas.addEventListener('pointerdown', (ev) => {
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    if (!state.drawn) newInput();            // the first stroke of a new drawing: old results go grey
    stroke = canvasPoint(ev);
    line(stroke, { x: stroke.x + 0.01, y: stroke.y });
    state.drawn = true;
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (!stroke) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of (events.length ? events : [ev])) { const p = canvasPoint(e); line(stroke, p); stroke = p; }
    update({ kind: 'draw', quick: true });   // live while drawing, without the occlusion map
  });
  function endStroke() {
    if (!stroke) return;
    stroke = null;
    showBlobWarning();
    update({ kind: 'draw' });
  }
  canvas.addEventListener('pointerup', endStroke);
  canvas.addEventListener('pointercancel', endStroke);

  // ---- results go grey (or away) whenever the input changes ----
  function newInput() {
    state.gen += 1;                          // answers for older inputs are dropped
    state.full = false;
    state.pixels = null;
    $('attack').disabled = true;
    $('sec-attack').hidden = true;           // an attack on the previous digit no longer applies
    $('attack-out').replaceChildren();
    for (const id of ['probs', 'occlusion', 'features', 'seen']) $(id).classList.add('stale');
    $('warning').hidden = true;
    state.blob = null;
    refreshCues();
  }
  function clearAll() {
    clearCanvas();
    newInput();
    state.pending = null;
    state.last = null;
    setCells('probs', [h('p', { class: 'muted small', text: 'cleared — draw a digit' })]);
    setCells('occlusion', []); setCells('features', []);
    $('seen').hidden = true; $('seen-empty').hidden = false; $('seen-caption').textContent = '';
    $('probs').classList.remove('stale');
    message('');
  }

  // ---- updates: one request in flight; while it runs only the latest wish is kept ----
  function update(req) { state.pending = { ...req, gen: state.gen }; if (!state.busy) pump(); }
  async function pump() {
    setBusy(true);
    while (state.pending) {
      const req = state.pending;
      state.pending = null;
      try { await runUpdate(req); } catch (e) {
        if (req.gen === state.gen) message(req.kind === 'upload' ? `Upload rejected: ${e.message}` : e.message, 'error');
      }
    }
    setBusy(false);
  }
  function options() { const t = $('target').value; return { target: t === '' ? null : Number(t), patch: Number($('patch').value) }; }
  async function runUpdate(req) {
    const t0 = performance.now();
    let res;
    if (req.kind === 'draw') {
      if (!state.drawn) return;
      res = await api('POST', '/api/analyze', { image: canvas.toDataURL('image/png'), source: 'drawing', occlusion: !req.quick, ...options() });
    } else if (req.kind === 'pixels') {
      if (!state.pixels) return;
      res = await api('POST', '/api/analyze', { pixels: state.pixels, ...options() });
    } else if (req.kind === 'test') {
      res = await api('POST', '/api/analyze', { test: req.index, ...options() });
    } else if (req.kind === 'upload') {
      res = await api('POST', '/api/analyze', { image: req.dataUrl, source: 'upload', ...options() });
    }
    if (!res || req.gen !== state.gen) return;          // stale: the input changed meanwhile
    render(res);
    const ms = performance.now() - t0;
    $('timing').textContent = `last update: ${ms.toFixed(0)} ms in the browser, ${(1000 * res.seconds).toFixed(0)} ms of it computing`;
    if (req.kind === 'upload') message(`${req.name}: preprocessed like MNIST (20×20 box, centred by mass)`, 'info');
    else if ($('message').classList.contains('error')) message('');
  }

  // ---- rendering the analysis ----
  function render(res) {
    state.last = res;
    state.pixels = res.input.pixels;
    const full = res.runs.every((r) => r.occlusion);
    const seen = $('seen');
    seen.src = res.input.png; seen.className = 'px'; seen.hidden = false;
    $('seen-empty').hidden = true;
    const src = res.input;
    let caption = 'drawn on the canvas, cropped to a 20×20 box and centred by mass like MNIST';
    if (src.kind === 'test') { caption = `test image #${src.index} — true label ${className(src.label)}`; $('test-index').value = src.index; }
    else if (src.kind === 'upload') caption = 'uploaded photo, preprocessed like MNIST';
    else if (src.kind === 'pixels') caption = $('seen-caption').textContent;
    $('seen-caption').textContent = caption;
    // the attack starts from the full result only (not from a half-drawn stroke)
    state.full = full;
    $('attack').disabled = state.attackBusy || !full;
    for (const id of ['probs', 'features', 'seen']) $(id).classList.remove('stale');

    const chosen = options().target;
    setCells('probs', res.runs.map((r, i) => {
      const u = r.unsure;
      const c = cue(u.unsure);
      return h('div', { class: 'cell' }, runHeading(i),
        h('p', { class: 'pred' }, 'predicts ', h('b', { text: className(r.pred), 'data-testid': `pred-${i}` }),
          h('span', { text: pct(r.probs[r.pred]), 'data-testid': `conf-${i}` }),
          h('span', { class: c.cls, 'data-testid': `cue-${i}`, 'data-unsure': u.unsure ? '1' : '0',
            title: `top-2 margin ${u.margin.toFixed(2)} of the largest training aims for; unsure below ${state.info.unsure_margin}`,
            text: c.text })),
        bars(r.probs, r.pred, chosen === null ? r.pred : chosen, res.runs.length));
    }));

    // The occlusion map (hundreds of forward passes) follows when a stroke ends; grey until then.
    $('occlusion').classList.toggle('stale', !full);
    if (full) {
      const stretch = $('stretch').checked;
      setCells('occlusion', res.runs.map((r, i) => {
        const o = r.occlusion;
        const k = className(o.target);
        const [base, low] = pctPair(o.base_prob, o.min);
        return h('div', { class: 'cell' }, runHeading(i), h('div', { class: 'occ' },
          h('figure', {}, img(res.input.png, 'px', 'input', 112), h('figcaption', { text: 'input' })),
          h('figure', {}, img(stretch ? o.png_stretched : o.png, 'px transparent', `occlusion map for class ${k}`, 112),
            img(state.info.occlusion_colorbar, 'colorbar', 'colour scale'),
            h('div', { class: 'cbar-labels' }, h('span', { text: stretch ? pctPair(o.min, o.max)[0] : '0%' }),
              h('span', { text: stretch ? pctPair(o.min, o.max)[1] : '100%' })),
            h('figcaption', { text: `P(${k}) with a ${o.patch}×${o.patch} grey patch centred on each pixel` })),
          h('div', { class: 'small occ-text' },
            h('p', { text: `Uncovered: P(${k}) = ${base}.` }),
            h('p', { text: `Lowest: ${low}, with the patch centred on row ${o.min_center[0]}, column ${o.min_center[1]} (the darkest pixel of the map).` }),
            o.stroke_share === null ? h('p', { text: 'No position lowers it.' }) :
              h('p', { text: `${pct(o.stroke_share)} of the drop falls on the strokes, which cover ${pct(o.even_share)} of the positions.` }))));
      }));
    }

    const scale = { conv1: 2, pool1: 3, conv2: 3, pool2: 5 };
    setCells('features', res.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
      Object.entries(r.features).map(([name, f]) => {
        const [c, hh, ww] = f.shape;
        return h('figure', { class: 'layer' },
          img(f.png, 'px transparent', `${name} feature maps`, (8 * (ww + 1) - 1) * scale[name]),
          h('figcaption', { text: `${name}: ${c} maps of ${hh}×${ww} (each unit sees ${f.receptive_field}×${f.receptive_field} pixels); ` +
            `${f.active_channels} channels active, ${pct(f.active_fraction)} of units > 0, layer max ${f.max.toFixed(2)}` }));
      }))));
  }

  function bars(probs, top, chosen, nruns) {
    const W = 320, H = nruns > 1 ? 112 : 140, L = 38, B = 20, T = 15;
    const bw = (W - L - 6) / probs.length;
    const y = (p) => T + (H - T - B) * (1 - p);
    const svg = s('svg', { class: 'bars', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'class probabilities' });
    for (const t of [0, 0.5, 1]) {
      svg.append(s('line', { class: 'axis', x1: L - 4, x2: W - 4, y1: y(t), y2: y(t), 'stroke-dasharray': t === 0 ? '' : '2 3' }));
      svg.append(s('text', { x: L - 8, y: y(t) + 4, 'text-anchor': 'end', text: `${100 * t}%` }));
    }
    probs.forEach((p, k) => {
      const x = L + k * bw + 3;
      const cls = 'bar' + (k === top ? ' top' : '') + (k === chosen && chosen !== top ? ' chosen' : '');
      const r = s('rect', { class: cls, x, y: y(p), width: bw - 6, height: Math.max(0.5, y(0) - y(p)) });
      r.append(s('title', { text: `${className(k)}: ${pct(p)}` }));
      svg.append(r);
      svg.append(s('text', { x: x + (bw - 6) / 2, y: H - 5, 'text-anchor': 'middle', text: className(k).slice(0, 5) }));
      if (p >= 0.05) svg.append(s('text', { x: x + (bw - 6) / 2, y: y(p) - 3, 'text-anchor': 'middle', text: Math.round(100 * p) + '%' }));
    });
    return svg;
  }

  function tiles(rows, source, what = 'generated') {
    const out = h('div', { class: 'tiles' });
    if (source) out.append(h('figure', { class: 'tile source' }, img(source.png, 'px', 'source digit'), h('figcaption', { text: source.caption })));
    for (const r of rows) {
      const hit = r.pred === r.target;
      out.append(h('figure', { class: 'tile' }, img(r.png, 'px', `${what} for class ${r.target}`),
        h('figcaption', {}, `→ ${className(r.target)}`, h('br'),
          h('span', { class: hit ? 'hit' : 'miss', text: hit ? pct(r.target_prob) : `reads ${className(r.pred)}` }))));
    }
    return out;
  }

  // ---- static parts: layer table, filters, the notes on confidence ----
  function renderInfo() {
    const info = state.info;
    root.style.setProperty('--nruns', String(info.runs.length));
    $('runs-title').textContent = info.runs.map((r) =>
      r.label + (r.test_accuracy != null ? ` — test accuracy ${(100 * r.test_accuracy).toFixed(2)}%` : '')).join('  |  ');
    info.class_names.forEach((n, k) => $('target').append(h('option', { value: String(k), text: n })));
    info.betas.forEach((b) => $('beta').append(h('option', { value: String(b), text: String(b), selected: b === info.beta })));
    $('act-cbar').src = info.activation_colorbar;
    $('attack-steps').textContent = String(info.attack_steps);
    showCalibration(info.calibration);

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
    const fmt = (v) => (Array.isArray(v) ? v.join('×') : (typeof v === 'number' ? v.toLocaleString('en') : String(v ?? '')));
    const p = summary.params, n = summary.neurons;
    const table = h('table', { class: 'layers' },
      h('thead', {}, h('tr', {}, cols.map(([, label]) => h('th', { text: label })))),
      h('tbody', {}, rows.map((row) => h('tr', { title: row.detail || '' }, cols.map(([k]) => h('td', { text: fmt(row[k]) })))),
        h('tr', { class: 'total' }, h('td', { text: 'total' }), h('td'), h('td'), h('td'), h('td', { text: fmt(p.total) }), h('td', { text: fmt(n.total) }))));
    return h('div', {}, h('div', { class: 'table-wrap' }, table),
      h('p', { class: 'small', text: `parameters: conv ${fmt(p.conv)}, fully connected ${fmt(p.fc)}` + (p.batch_norm ? `, batch-norm ${fmt(p.batch_norm)}` : '') }),
      h('p', { class: 'small', text: `neurons: conv ${fmt(n.conv)}, fully connected ${fmt(n.fc)}` }),
      h('p', { class: 'small muted', text: summary.definitions ? summary.definitions.neuron : '' }));
  }

  // The notes on confidence and on the unsure rule quote only what the app measured on these
  // runs (their test images and the shipped non-digit drawings): until then, only the rule.
  function unsureRule() {
    const m = state.info.unsure_margin;
    return `"Unsure" when the gap between the top two classes is under ${m} of the largest gap training aims for, ` +
      `(p1 − p2) / (1 − ε) < ${m}. The network only knows ten classes and has no "none of these".`;
  }
  function showCalibration(cal) {
    if (!cal) {
      $('confidence-note').textContent = 'Measuring how confident the network is on its test images…';
      $('unsure-rule').textContent = unsureRule();
      return;
    }
    $('confidence-note').textContent = cal.notes.confidence.join(' ');
    $('unsure-rule').textContent = [unsureRule(), ...cal.notes.unsure].join(' ');
    root.dataset.calibrated = '1';
  }
  async function loadCalibration() {
    if (state.info.calibration) return;
    try {
      showCalibration(await api('POST', '/api/calibration', {}));
    } catch (e) {
      $('confidence-note').textContent = `Not measured: ${e.message}`;
    }
  }

  async function loadBeliefs() {
    $('beliefs-go').disabled = true;
    const cells = state.info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
      h('p', { class: 'spinner', text: 'computing class models and targeted fakes (first time only)…' })));
    setCells('beliefs', cells);
    await Promise.all(state.info.runs.map(async (r, i) => {
      try {
        const b = await api('POST', `/api/beliefs/${i}`, {});
        const fs = b.fake_source;
        cells[i].replaceChildren(...[runHeading(i),
          h('p', { class: 'small', text: 'Class models (from noise, C = logits[target]):' }), tiles(b.class_models),
          h('p', { class: 'small natural-caption', text: `Natural class models (the same C, X kept among likely digit images: a Gaussian prior on the training images' top ${state.info.natural_components} principal components):` }),
          h('div', { class: 'natural' }, tiles(b.natural, null, 'natural class model')),
          h('p', { class: 'small', text: `Targeted fakes of test image #${fs.index} (a ${className(fs.label)}):` }),
          tiles(b.fakes, { png: fs.png, caption: `source #${fs.index}` }),
          h('p', { class: 'small muted', text: b.cached ? 'from the cache' : `computed in ${b.seconds} s and cached` })].filter(Boolean));
      } catch (e) {
        cells[i].replaceChildren(...[runHeading(i), h('p', { class: 'small muted', text: `not available: ${e.message}` })].filter(Boolean));
        $('beliefs-go').disabled = false;       // a failure may be retried
      }
    }));
  }

  async function attack() {
    if (!state.pixels || !state.full || state.attackBusy) return;
    const gen = state.gen;
    state.attackBusy = true;
    const btn = $('attack');
    btn.disabled = true;
    btn.textContent = 'attacking…';
    $('sec-attack').hidden = false;
    setCells('attack-out', state.info.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
      h('p', { class: 'spinner', text: 'running gradient ascent on the image, from your digit…' }))));
    try {
      const res = await api('POST', '/api/attack', { pixels: state.pixels, beta: Number($('beta').value) });
      if (gen === state.gen) {
        setCells('attack-out', res.runs.map((r, i) => h('div', { class: 'cell' }, runHeading(i),
          tiles(r.rows, { png: res.input.png, caption: 'your digit' }),
          h('p', { class: 'small muted', text: `β = ${r.params.beta}, ${r.params.steps} steps starting from your digit; ${res.seconds} s` }))));
      }
    } catch (e) {
      if (gen === state.gen) setCells('attack-out', [h('p', { class: 'small', text: `attack failed: ${e.message}` })]);
    } finally {
      state.attackBusy = false;
      btn.disabled = !(state.pixels && state.full);
      btn.textContent = 'Push this digit toward every class';
    }
  }

  // ---- wiring ----
  $('clear').addEventListener('click', clearAll);
  $('brush').addEventListener('input', () => { $('brush-value').textContent = `${brush()} px`; });
  $('test-show').addEventListener('click', () => {
    const n = Number($('test-index').value);
    if (!Number.isInteger(n)) { message('the test image index must be a whole number', 'error'); return; }
    clearCanvas(); newInput(); update({ kind: 'test', index: n });
  });
  $('test-random').addEventListener('click', () => { clearCanvas(); newInput(); update({ kind: 'test', index: 'random' }); });
  $('upload').addEventListener('change', (ev) => {
    const f = ev.target.files && ev.target.files[0];
    ev.target.value = '';
    if (!f) return;
    if (f.size > state.info.limits.max_upload_bytes) {
      message(`Upload rejected: ${f.name} is larger than ${state.info.limits.max_upload_bytes / 1048576} MiB`, 'error');
      return;
    }
    clearCanvas(); newInput();
    message(`reading ${f.name}…`, 'info');
    const reader = new FileReader();
    reader.onload = () => update({ kind: 'upload', dataUrl: reader.result, name: f.name });
    reader.onerror = () => message(`Upload rejected: ${f.name} could not be read`, 'error');
    reader.readAsDataURL(f);
  });
  const patch = $('patch');
  patch.addEventListener('input', () => { $('patch-value').textContent = `${patch.value}×${patch.value}`; update({ kind: 'pixels' }); });
  $('target').addEventListener('change', () => update({ kind: 'pixels' }));
  $('stretch').addEventListener('change', () => { if (state.last) render(state.last); });
  $('attack').addEventListener('click', attack);
  $('beliefs-go').addEventListener('click', loadBeliefs);

  (async () => {
    clearCanvas();
    try { state.info = await api('GET', '/api/info'); } catch (e) { message(`cannot load the runs: ${e.message}`, 'error'); return; }
    renderInfo();
    root.dataset.ready = '1';
    loadCalibration();
    if (state.info.beliefs_cached && state.info.beliefs_cached.every(Boolean)) loadBeliefs();
  })();
}

// The standalone page: mount on the page's own root, talking to the server over fetch.
if (typeof document !== 'undefined' && document.documentElement.classList.contains('cnnlab-page')) {
  mount(document.getElementById('cnnlab-explore'), fetchTransport(), '');
}

// The notebook widget (anywidget): the same app in the output cell, talking to the kernel.
export default {
  render({ model, el }) {
    const tpl = document.createElement('template');
    tpl.innerHTML = model.get('_html');          // cnnlab's own markup (explore.html), not user data
    const root = tpl.content.firstElementChild;
    el.replaceChildren(root);
    const suffix = uniqueSuffix();               // this widget's ids are its own
    mount(root, widgetTransport(model, suffix), suffix);
  },
};

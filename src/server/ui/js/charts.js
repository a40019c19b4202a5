// A grid of uPlot chart panels, grouped in sections, used by the Charts, System and Compare
// pages. A panel is created only when it scrolls into view, and fetches its series with one
// bucket per pixel of its width; live updates fetch only points after each line's cursor.

import { get, projectUrl, runUrl } from './api.js';
import { color, fmtNum, fmtTick, fmtTime, h } from './dom.js';
import {
  appendSeries, compact, ema, emptyLine, hasBand, lineFromSeries, stepMetricFor,
} from './series.js';

const HEIGHT = 190;
const MAX_PARALLEL = 6; // what a browser opens to one host anyway
let syncCount = 0;

const X_LABELS = { _step: 'step', _runtime: 'relative time (s)', _timestamp: 'wall time' };

function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
}

function fmtX(x, axis) {
  if (x === null || x === undefined) return '';
  if (axis === '_timestamp') return fmtTime(x);
  if (axis === '_runtime') return `${fmtNum(x)} s`;
  return fmtNum(x);
}

/**
 * @param {HTMLElement} container
 * @param {object} opts
 *   project, runs: [{id, name, color}], source: 'history' | 'system', testid,
 *   panels: [{key, section, lines: [{key, label, runId?}]}], metrics (define_metric
 *   definitions, for the default x-axis), xMetrics (numeric keys offered as x-axis),
 *   defaultX: 'auto' (each metric's step metric, else _step) or an axis name.
 */
export class ChartGrid {
  constructor(container, opts) {
    this.opts = opts;
    this.project = opts.project;
    this.runs = opts.runs;
    this.source = opts.source || 'history';
    this.metrics = opts.metrics || {};
    this.panels = [];
    this.sections = new Map();
    this.queue = [];
    this.active = 0;
    this.syncKey = `runbus-sync-${++syncCount}`;
    this.destroyed = false;
    this.smoothing = 0;
    this.logScale = false;

    const axes = this.source === 'system' ? ['_runtime', '_timestamp', '_step'] : ['auto', '_step', '_runtime', '_timestamp'];
    this.xSelect = h('select', { 'data-testid': 'x-axis', title: 'x-axis' },
      axes.map((a) => h('option', { value: a }, a === 'auto' ? 'step (define_metric x-axis)' : a)),
      (opts.xMetrics || []).filter((k) => !k.startsWith('_')).map((k) => h('option', { value: k }, k)));
    this.xSelect.value = opts.defaultX || axes[0];
    this.smoothInput = h('input', { type: 'range', min: '0', max: '0.99', step: '0.01', value: '0', 'data-testid': 'smoothing' });
    this.smoothLabel = h('span', { class: 'smooth-val' }, '0');
    this.logInput = h('input', { type: 'checkbox', 'data-testid': 'log-scale' });
    this.resetBtn = h('button', { 'data-testid': 'reset-zoom', title: 'show every panel whole again' }, 'Reset zoom');
    this.search = h('input', { type: 'search', placeholder: 'find a metric', 'data-testid': 'chart-search', class: 'chart-search' });
    this.el = h('div', { class: 'chart-grid', 'data-testid': opts.testid || 'charts' });
    container.append(
      h('div', { class: 'chart-controls' },
        h('label', null, 'x-axis ', this.xSelect),
        h('label', null, 'smoothing ', this.smoothInput, this.smoothLabel),
        h('label', null, this.logInput, ' log scale'),
        this.resetBtn, this.search),
      this.el);

    this.xSelect.addEventListener('change', () => this.reloadAll());
    this.smoothInput.addEventListener('input', () => {
      this.smoothing = Number(this.smoothInput.value);
      this.smoothLabel.textContent = this.smoothInput.value;
      this.redrawAll(false);
    });
    this.logInput.addEventListener('change', () => {
      this.logScale = this.logInput.checked;
      this.redrawAll(true);
    });
    this.resetBtn.addEventListener('click', () => {
      for (const p of this.panels) if (p.zoom) this.resetZoom(p);
    });
    this.search.addEventListener('input', () => this.applySearch());

    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const p = e.target._panel;
        if (!p) continue;
        p.visible = e.isIntersecting;
        if (!p.visible) continue;
        if (p.state === 'pending') this.load(p);
        else if (p.stale && !p.zoom) { p.stale = false; this.load(p); }
      }
    }, { rootMargin: '250px 0px' });
    this.resizer = new ResizeObserver(() => {
      clearTimeout(this.resizeTimer);
      this.resizeTimer = setTimeout(() => this.resizeAll(), 100);
    });
    this.resizer.observe(this.el);
    this.addPanels(opts.panels);
  }

  /** Add panels for keys not shown yet (new keys of a live run). */
  addPanels(specs) {
    const known = new Set(this.panels.map((p) => p.key));
    for (const spec of specs) {
      if (known.has(spec.key)) continue;
      const lines = spec.lines.map((l, i) => ({
        ...l,
        runId: l.runId ?? this.runs[0].id,
        color: l.color ?? color(i),
        data: null,
      }));
      const p = {
        key: spec.key, section: spec.section, lines, state: 'pending', visible: false, zoom: null,
        stale: false, plot: null, sig: null, loading: false, again: false,
      };
      p.title = h('span', { class: 'panel-title', title: spec.key }, spec.key);
      p.xLabel = h('span', { class: 'panel-x muted' });
      p.plotEl = h('div', { class: 'panel-plot' });
      p.readout = h('div', { class: 'readout', 'data-testid': 'hover-readout' });
      p.msg = h('div', { class: 'panel-msg muted' });
      p.el = h('div', { class: 'panel', 'data-testid': 'chart-panel', 'data-key': spec.key, 'data-state': 'pending' },
        h('div', { class: 'panel-head' }, p.title, p.xLabel), p.plotEl, p.msg, p.readout);
      p.el._panel = p;
      this.sectionEl(spec.section).append(p.el);
      this.panels.push(p);
      this.observer.observe(p.el);
    }
    this.applySearch();
  }

  sectionEl(name) {
    if (!this.sections.has(name)) {
      const body = h('div', { class: 'panels' });
      const sec = h('section', { class: 'chart-section', 'data-testid': 'chart-section', 'data-section': name },
        h('details', { open: true }, h('summary', null, name), body));
      // Sections in name order, 'other' last, wherever a live run's new key adds one.
      const rank = (n) => `${n === 'other' ? 1 : 0}${n}`;
      const next = [...this.sections.keys()].filter((n) => rank(n) > rank(name)).sort((a, b) => (rank(a) < rank(b) ? -1 : 1))[0];
      if (next !== undefined) this.el.insertBefore(sec, this.sections.get(next).sec);
      else this.el.append(sec);
      this.sections.set(name, { sec, body });
    }
    return this.sections.get(name).body;
  }

  applySearch() {
    const q = this.search.value.trim().toLowerCase();
    for (const p of this.panels) p.el.hidden = Boolean(q) && !p.key.toLowerCase().includes(q);
    for (const { sec } of this.sections.values()) {
      sec.hidden = Boolean(q) && !sec.querySelector('[data-testid=chart-panel]:not([hidden])');
    }
  }

  /** The x-axis of a panel: the chosen one, or with 'auto' its metric's define_metric step. */
  xFor(p) {
    const v = this.xSelect.value;
    if (v !== 'auto') return v;
    return stepMetricFor(p.lines[0].key, this.metrics) || '_step';
  }

  // ---- fetching

  /** Run `fn` when fewer than MAX_PARALLEL fetches are in flight (panels load in DOM order). */
  schedule(fn) {
    return new Promise((resolve, reject) => {
      this.queue.push({ fn, resolve, reject });
      this.pump();
    });
  }

  pump() {
    while (this.active < MAX_PARALLEL && this.queue.length) {
      const { fn, resolve, reject } = this.queue.shift();
      this.active++;
      fn().then(resolve, reject).finally(() => { this.active--; this.pump(); });
    }
  }

  /** GET series for some lines of a panel; returns Map "runId\0key" -> series. */
  async fetchSeries(lines, params) {
    const runIds = [...new Set(lines.map((l) => l.runId))];
    const keys = [...new Set(lines.map((l) => l.key))];
    const path = runIds.length === 1
      ? `${runUrl(this.project, runIds[0])}/${this.source}`
      : `${projectUrl(this.project)}/${this.source}`;
    const body = await get(path, {
      runs: runIds.length === 1 ? null : runIds.join(','),
      keys: keys.join(','), ...params,
    });
    const out = new Map();
    for (const s of body.series) out.set(`${s.run_id}\u0000${s.key}`, s);
    return out;
  }

  buckets(p) {
    return Math.max(50, Math.min(4000, Math.round(p.plotEl.clientWidth || p.el.clientWidth || 400)));
  }

  /** Fetch a panel whole (or its zoomed range) and draw it. */
  async load(p) {
    if (this.destroyed) return;
    if (p.loading) {
      // A zoom, reset or new x-axis asked while a fetch is out: do it when that one is done.
      p.again = true;
      return;
    }
    p.loading = true;
    if (p.state === 'pending') this.setState(p, 'loading');
    const x = this.xFor(p);
    const zoom = p.zoom;
    try {
      const series = await this.schedule(() => this.fetchSeries(p.lines, {
        x, buckets: this.buckets(p), x_min: zoom ? zoom.min : null, x_max: zoom ? zoom.max : null,
      }));
      if (this.destroyed) return;
      for (const l of p.lines) {
        const s = series.get(`${l.runId}\u0000${l.key}`);
        l.data = s ? lineFromSeries(s) : emptyLine();
        l.x = x;
      }
      p.x = x;
      p.stale = false;
      this.draw(p);
      if (zoom) {
        p.el.dataset.xMin = String(zoom.min);
        p.el.dataset.xMax = String(zoom.max);
        p.plot?.setScale('x', { min: zoom.min, max: zoom.max });
      } else {
        delete p.el.dataset.xMin;
        delete p.el.dataset.xMax;
      }
    } catch (e) {
      if (this.destroyed) return;
      this.setState(p, 'error');
      p.msg.textContent = e.message;
    } finally {
      this.settle(p);
    }
  }

  /** A panel's fetch ended: run the load that was asked for meanwhile, if any. */
  settle(p) {
    p.loading = false;
    if (p.again && !this.destroyed) {
      p.again = false;
      this.load(p);
    }
  }

  /** Live: fetch what is new for every drawn panel in view; those out of view catch up later. */
  async refresh() {
    const jobs = [];
    for (const p of this.panels) {
      if (p.state !== 'drawn' && p.state !== 'error') continue;
      if (!p.visible || p.el.hidden) { p.stale = true; continue; }
      if (p.zoom || p.loading) continue;
      if (p.state === 'error') { jobs.push(this.load(p)); continue; }
      jobs.push(this.refreshPanel(p));
    }
    await Promise.all(jobs);
  }

  async refreshPanel(p) {
    const x = p.x;
    // Lines whose cursors match share a request (usually all of them).
    const groups = new Map();
    for (const l of p.lines) {
      const c = l.data?.cursor ?? null;
      if (!groups.has(c)) groups.set(c, []);
      groups.get(c).push(l);
    }
    p.loading = true;
    try {
      let changed = false;
      for (const [cursor, lines] of groups) {
        const params = cursor === null ? { x, buckets: this.buckets(p) } : { x, after: cursor, buckets: this.buckets(p) };
        const series = await this.schedule(() => this.fetchSeries(lines, params));
        if (this.destroyed || p.x !== x || p.zoom) return;
        for (const l of lines) {
          const s = series.get(`${l.runId}\u0000${l.key}`);
          if (!s || !s.x.length) continue;
          l.data = cursor === null ? lineFromSeries(s) : appendSeries(l.data, s);
          compact(l.data, this.buckets(p));
          changed = true;
        }
      }
      if (changed) this.draw(p);
    } catch (e) {
      if (!this.destroyed) p.msg.textContent = e.message;
    } finally {
      this.settle(p);
    }
  }

  reloadAll() {
    for (const p of this.panels) {
      p.zoom = null;
      if (p.state === 'pending') continue;
      if (p.visible) this.load(p); else p.stale = true;
    }
  }

  redrawAll(rebuild) {
    for (const p of this.panels) {
      if (p.state !== 'drawn') continue;
      if (rebuild) p.sig = null;
      this.draw(p);
    }
  }

  resizeAll() {
    for (const p of this.panels) {
      if (p.plot) p.plot.setSize({ width: p.plotEl.clientWidth, height: HEIGHT });
    }
  }

  resetZoom(p) {
    p.zoom = null;
    this.load(p);
  }

  setState(p, state) {
    p.state = state;
    p.el.dataset.state = state;
  }

  // ---- drawing

  /** Build uPlot data and series from the panel's lines; (re)create the plot if its shape changed. */
  draw(p) {
    const smooth = this.smoothing;
    const log = this.logScale;
    const pos = (v) => (log && v !== null && v !== undefined && v <= 0 ? null : v);
    const withData = p.lines.filter((l) => l.data && l.data.x.length);
    const tables = [];
    const series = [{ label: X_LABELS[p.x] || p.x }];
    const bands = [];
    const mains = [];
    let points = 0;
    let downsampled = false;
    for (const l of withData) {
      const d = l.data;
      points += d.x.length;
      downsampled = downsampled || d.downsampled;
      const y = log ? d.y.map(pos) : d.y;
      const table = [d.x, smooth ? ema(y, smooth) : y];
      const base = series.length;
      mains.push({ idx: base, line: l });
      // uPlot shows points by itself only where they are few enough to tell apart.
      series.push({ label: l.label, stroke: l.color, width: 1.5 });
      if (smooth) {
        table.push(y);
        series.push({ label: `${l.label} (raw)`, stroke: alpha(l.color, 0.25), width: 1, points: { show: false } });
      }
      if (hasBand(d)) {
        table.push(log ? d.lo.map(pos) : d.lo, log ? d.hi.map(pos) : d.hi);
        const lo = series.length;
        series.push({ label: `${l.label} min`, stroke: 'transparent', width: 0, points: { show: false } },
          { label: `${l.label} max`, stroke: 'transparent', width: 0, points: { show: false } });
        bands.push({ series: [lo + 1, lo], fill: alpha(l.color, 0.15) });
      }
      tables.push(table);
    }
    p.mains = mains;
    p.el.dataset.seriesCount = String(withData.length);
    p.el.dataset.pointCount = String(points);
    p.el.dataset.downsampled = String(downsampled);
    p.el.dataset.x = p.x;
    p.xLabel.textContent = `x: ${X_LABELS[p.x] || p.x}`;
    if (!withData.length) {
      p.plot?.destroy();
      p.plot = null;
      p.sig = null;
      p.msg.textContent = p.x === '_step' || p.x === '_runtime' || p.x === '_timestamp'
        ? 'no points yet' : `no points with ${p.x} on the same step`;
      this.setState(p, 'drawn');
      return;
    }
    p.msg.textContent = '';
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const sig = JSON.stringify([series.map((s) => s.label), p.x, log]);
    if (p.plot && p.sig === sig) {
      p.plot.setData(data);
    } else {
      p.plot?.destroy();
      p.plot = new uPlot(this.plotOptions(p, series, bands, log), data, p.plotEl);
      p.sig = sig;
      p.plot.over.addEventListener('dblclick', () => this.resetZoom(p));
    }
    this.setState(p, 'drawn');
  }

  plotOptions(p, series, bands, log) {
    const axis = p.x;
    return {
      width: p.plotEl.clientWidth || 400,
      height: HEIGHT,
      series,
      bands,
      legend: { show: false },
      scales: { x: { time: axis === '_timestamp' }, y: { distr: log ? 3 : 1 } },
      axes: [
        { space: 70, ...(axis === '_timestamp' ? {} : { values: (_u, splits) => splits.map(fmtTick) }) },
        { size: 56, values: (_u, splits) => splits.map(fmtTick) },
      ],
      cursor: {
        sync: { key: this.syncKey, setSeries: false },
        drag: { x: true, y: false, setScale: false },
        points: { show: false },
      },
      hooks: {
        setSelect: [(u) => this.onSelect(p, u)],
        setCursor: [(u) => this.onCursor(p, u)],
      },
    };
  }

  onSelect(p, u) {
    const { left, width } = u.select;
    if (width < 3) return;
    const min = u.posToVal(left, 'x');
    const max = u.posToVal(left + width, 'x');
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    p.zoom = { min, max };
    this.load(p);
  }

  onCursor(p, u) {
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || !p.mains) { p.readout.replaceChildren(); return; }
    const x = u.data[0][idx];
    const parts = [h('span', { class: 'ro-x' }, `${X_LABELS[p.x] || p.x} ${fmtX(x, p.x)}`)];
    for (const { idx: si, line } of p.mains) {
      const ys = u.data[si];
      let i = idx;
      while (i >= 0 && ys[i] === undefined) i--; // aligned series: the nearest point to the left
      const v = i >= 0 ? ys[i] : undefined;
      parts.push(h('span', { class: 'ro-v' }, h('i', { style: `background:${line.color}` }),
        p.lines.length > 1 || this.runs.length > 1 ? `${line.label} ` : '', v === null ? 'gap' : fmtNum(v)));
    }
    p.readout.replaceChildren(...parts);
  }

  destroy() {
    this.destroyed = true;
    this.observer.disconnect();
    this.resizer.disconnect();
    clearTimeout(this.resizeTimer);
    for (const p of this.panels) p.plot?.destroy();
    this.queue = [];
  }
}

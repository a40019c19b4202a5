// The Media tab: images (with a step slider), videos, audio, HTML, tables (sortable, paged),
// histograms over steps, and Vega-Lite plots (rendered by vega-embed, loaded on first use).

import { fileUrl, get, getFileJson, runUrl } from './api.js';
import { fmtNum, fmtValue, h, notice } from './dom.js';

const PAGE = 1000;
const MAX_PAGES = 50; // at most 50,000 values per visit; the newest are what people look at
const TABLE_ROWS = 10;

let vegaLoading = null;
/** Load vega, vega-lite and vega-embed (about 850 KB) once, when a plot is first shown. */
function loadVega() {
  const load = (src) => new Promise((resolve, reject) => {
    const s = h('script', { src });
    s.onload = resolve;
    s.onerror = () => reject(new Error(`cannot load ${src}; rebuild the UI assets (make ui)`));
    document.head.append(s);
  });
  vegaLoading ??= load('/ui/vendor/vega.min.js')
    .then(() => load('/ui/vendor/vega-lite.min.js'))
    .then(() => load('/ui/vendor/vega-embed.min.js'));
  return vegaLoading;
}

const kindOf = (v) => {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'text';
  if (v._type === 'list') return v.of || 'text';
  return v._type || 'text';
};
const itemsOf = (v) => (v && v._type === 'list' ? v.items || [] : [v]);

/** A step slider over `entries`; calls show(entry) now and on every move. */
function stepSlider(entries, show, testid) {
  const input = h('input', { type: 'range', min: '0', max: String(entries.length - 1), value: String(entries.length - 1), step: '1', 'data-testid': testid });
  const label = h('span', { class: 'step-label' });
  const wrap = h('div', { class: 'step-picker' }, h('span', { class: 'muted' }, 'step '), input, label);
  const atEnd = () => Number(input.value) === Number(input.max);
  const apply = () => {
    const e = entries[Number(input.value)];
    label.textContent = String(e.step);
    input.dataset.step = String(e.step);
    show(e);
  };
  input.addEventListener('input', apply);
  input.disabled = entries.length < 2;
  apply();
  return {
    el: wrap,
    grow(newEntries) {
      const follow = atEnd();
      entries = newEntries;
      input.max = String(entries.length - 1);
      input.disabled = entries.length < 2;
      if (follow) input.value = input.max;
      apply();
    },
  };
}

function mediaEl(ctx, kind, ref) {
  const src = fileUrl(ctx.project, ctx.runId, ref.path);
  if (kind === 'image') {
    return h('figure', null,
      h('img', { src, 'data-testid': 'media-image', alt: ref.caption || ref.path, width: ref.width, height: ref.height }),
      ref.caption ? h('figcaption', null, ref.caption) : null);
  }
  if (kind === 'video' && (ref.format === 'gif' || /\.gif$/i.test(ref.path))) {
    // Video's default format is GIF, which <video> cannot play: an <img> animates it.
    return h('figure', null,
      h('img', { src, 'data-testid': 'media-video', alt: ref.caption || ref.path, width: ref.width, height: ref.height }),
      ref.caption ? h('figcaption', null, ref.caption) : null);
  }
  if (kind === 'video') {
    return h('figure', null, h('video', { src, controls: true, loop: true, 'data-testid': 'media-video', preload: 'metadata' }),
      ref.caption ? h('figcaption', null, ref.caption) : null);
  }
  if (kind === 'audio') {
    return h('figure', null, h('audio', { src, controls: true, 'data-testid': 'media-audio', preload: 'metadata' }),
      ref.caption ? h('figcaption', null, ref.caption) : null);
  }
  // HTML runs in a sandbox: no scripts, no access to this page's origin or the API.
  return h('iframe', { src, sandbox: '', 'data-testid': 'media-html', class: 'media-html', title: ref.path });
}

function filesWidget(ctx, kind) {
  const body = h('div', { class: 'media-row' });
  let slider = null;
  const show = (e) => body.replaceChildren(...itemsOf(e.value).filter((r) => r && r.path).map((r) => mediaEl(ctx, kind, r)));
  return {
    el: h('div', null, body),
    update(entries) {
      if (!slider) {
        slider = stepSlider(entries, show, kind === 'image' ? 'media-step' : `media-step-${kind}`);
        body.before(slider.el);
      } else slider.grow(entries);
    },
  };
}

/** A table file shown sortable by any column and paged. */
function tableView(data) {
  const columns = data.columns || [];
  const rows = (data.data || []).map((r, i) => ({ r, i }));
  let sort = null;
  let pageNo = 0;
  const table = h('table', { class: 'grid media-table', 'data-testid': 'media-table' });
  const pager = h('div', { class: 'pager' });
  const cellEl = (v) => {
    if (v && typeof v === 'object' && v._type === 'image' && v.path) return null;
    return typeof v === 'number' ? h('td', { class: 'num' }, fmtNum(v)) : h('td', null, fmtValue(v));
  };
  const render = () => {
    const pages = Math.max(1, Math.ceil(rows.length / TABLE_ROWS));
    pageNo = Math.min(pageNo, pages - 1);
    const head = h('tr', null, columns.map((c, j) => h('th', {
      class: 'sortable', 'data-col': c,
      'aria-sort': sort && sort.j === j ? (sort.desc ? 'descending' : 'ascending') : null,
      onclick: () => {
        sort = sort && sort.j === j ? { j, desc: !sort.desc } : { j, desc: false };
        const dir = sort.desc ? -1 : 1;
        const rank = (v) => (typeof v === 'number' && !Number.isNaN(v) ? 0 : typeof v === 'string' ? 1 : 2);
        rows.sort((a, b) => {
          const x = a.r[j];
          const y = b.r[j];
          if (rank(x) !== rank(y)) return rank(x) - rank(y);
          if (rank(x) === 2 || x === y) return a.i - b.i;
          return (x < y ? -1 : 1) * dir;
        });
        pageNo = 0;
        render();
      },
    }, c, sort && sort.j === j ? (sort.desc ? ' ▼' : ' ▲') : '')));
    const body = rows.slice(pageNo * TABLE_ROWS, (pageNo + 1) * TABLE_ROWS).map(({ r, i }) =>
      h('tr', { 'data-row': String(i) }, r.map((v) => cellEl(v) ?? h('td', null, h('span', { class: 'muted' }, fmtValue(v))))));
    table.replaceChildren(h('thead', null, head), h('tbody', null, body));
    pager.replaceChildren(
      h('button', { 'data-testid': 'table-prev', disabled: pageNo === 0, onclick: () => { pageNo--; render(); } }, '‹ prev'),
      h('span', { 'data-testid': 'table-page' }, ` page ${pageNo + 1} of ${pages} (${rows.length} rows${data.rows_cut ? `, ${data.rows_cut} cut when logged` : ''}) `),
      h('button', { 'data-testid': 'table-next', disabled: pageNo >= pages - 1, onclick: () => { pageNo++; render(); } }, 'next ›'));
  };
  render();
  return h('div', { class: 'table-wrap' }, table, pager);
}

const rowsOf = (data) => (data.data || []).map((r) => Object.fromEntries((data.columns || []).map((c, j) => [c, r[j]])));

function tableWidget(ctx, kind) {
  const body = h('div');
  let slider = null;
  let token = 0;
  const show = async (e) => {
    const mine = ++token;
    const ref = kind === 'plot' ? e.value.table : e.value;
    if (!ref || !ref.path) { body.replaceChildren(notice('no table file in this value')); return; }
    try {
      const data = await getFileJson(ctx.project, ctx.runId, ref.path);
      if (mine !== token) return;
      if (kind === 'table') { body.replaceChildren(tableView(data)); return; }
      await loadVega();
      if (mine !== token) return;
      const target = h('div', { class: 'media-plot', 'data-testid': 'media-plot' });
      body.replaceChildren(target);
      const spec = structuredClone(e.value.spec);
      spec.datasets = { ...(spec.datasets || {}), table: rowsOf(data) };
      if (!spec.width && !spec.hconcat && !spec.concat && !spec.facet && !spec.repeat) spec.width = 'container';
      // logLevel Error: pipeline.plot writes Vega-Lite v5 specs, which v6 renders the same
      // but warns about on every plot.
      await window.vegaEmbed(target, spec, {
        actions: { export: true, source: false, compiled: false, editor: false },
        logLevel: window.vega.Error,
      });
      target.dataset.state = 'drawn';
    } catch (err) {
      if (mine === token) body.replaceChildren(notice(`cannot show ${ref.path}: ${err.message}`, 'notice error'));
    }
  };
  return {
    el: h('div', null, body),
    update(entries) {
      if (!slider) {
        slider = stepSlider(entries, show, `media-step-${kind}`);
        body.before(slider.el);
      } else slider.grow(entries);
    },
  };
}

/** Histograms over steps as a heat map: a column per step, darker where more values fell. */
function histogramWidget() {
  const canvas = h('canvas', { class: 'histo', height: '220' });
  const readout = h('div', { class: 'readout muted' });
  const el = h('div', { 'data-testid': 'media-histogram', class: 'histogram' }, canvas, readout);
  let entries = [];
  let geom = null;
  const PAD_L = 56;
  const PAD_B = 20;
  const draw = () => {
    const hs = entries.filter((e) => e.value && Array.isArray(e.value.bins) && e.value.bins.length > 1);
    el.dataset.steps = String(hs.length);
    const W = canvas.width = Math.max(300, el.clientWidth || 600);
    const H = canvas.height;
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, W, H);
    if (!hs.length) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (const e of hs) { lo = Math.min(lo, e.value.bins[0]); hi = Math.max(hi, e.value.bins[e.value.bins.length - 1]); }
    if (hi <= lo) hi = lo + 1;
    const pw = W - PAD_L;
    const ph = H - PAD_B;
    const colW = pw / hs.length;
    const yOf = (v) => ph - ((v - lo) / (hi - lo)) * ph;
    hs.forEach((e, i) => {
      const { bins, counts } = e.value;
      const max = Math.max(1, ...counts);
      for (let j = 0; j < counts.length; j++) {
        if (!counts[j]) continue;
        const y0 = yOf(bins[j + 1]);
        const y1 = yOf(bins[j]);
        g.fillStyle = `rgba(31, 119, 180, ${0.12 + 0.88 * (counts[j] / max)})`;
        g.fillRect(PAD_L + i * colW, y0, Math.max(1, colW - (colW > 3 ? 1 : 0)), Math.max(1, y1 - y0));
      }
    });
    g.fillStyle = '#555';
    g.font = '11px system-ui, sans-serif';
    g.fillText(fmtNum(hi), 2, 10);
    g.fillText(fmtNum(lo), 2, ph);
    g.fillText(`step ${hs[0].step}`, PAD_L, H - 5);
    const lastLabel = `step ${hs[hs.length - 1].step}`;
    g.fillText(lastLabel, W - g.measureText(lastLabel).width - 2, H - 5);
    geom = { hs, lo, hi, colW, ph };
  };
  canvas.addEventListener('mousemove', (ev) => {
    if (!geom) return;
    const rect = canvas.getBoundingClientRect();
    const i = Math.floor((ev.clientX - rect.left - PAD_L) / geom.colW);
    const e = geom.hs[i];
    if (!e) { readout.textContent = ''; return; }
    const v = geom.lo + (1 - (ev.clientY - rect.top) / geom.ph) * (geom.hi - geom.lo);
    const { bins, counts } = e.value;
    const j = bins.findIndex((b, k) => k < counts.length && v >= b && v <= bins[k + 1]);
    readout.textContent = j < 0 ? `step ${e.step}` : `step ${e.step}: [${fmtNum(bins[j])}, ${fmtNum(bins[j + 1])}] ${counts[j]} values`;
  });
  return { el, update(all) { entries = all; draw(); } };
}

function textWidget() {
  const list = h('table', { class: 'kv media-values' });
  return {
    el: list,
    update(entries) {
      list.replaceChildren(h('tbody', null, entries.slice(-100).reverse().map((e) =>
        h('tr', { 'data-step': String(e.step) }, h('th', null, `step ${e.step}`), h('td', null, fmtValue(e.value))))));
    },
  };
}

function widgetFor(ctx, kind) {
  if (kind === 'image' || kind === 'video' || kind === 'audio' || kind === 'html') return filesWidget(ctx, kind);
  if (kind === 'table' || kind === 'plot') return tableWidget(ctx, kind);
  if (kind === 'histogram') return histogramWidget();
  return textWidget();
}

export async function mountMedia(el, ctx) {
  const url = `${runUrl(ctx.project, ctx.runId)}/values`;
  const byKey = new Map(); // key -> [{step, value}]
  const widgets = new Map();
  // Keys fetched together share a cursor (a page never ends inside a step); keys that show
  // up later in a live run form a group of their own, read from their first step.
  const groups = [];
  let stopped = false;
  const empty = notice('No media, tables or other non-numeric values logged yet.');
  const list = h('div', { class: 'media' });
  el.append(list);

  async function fetchNew(group, touched) {
    for (let i = 0; i < MAX_PAGES; i++) {
      const body = await get(url, { keys: group.keys.join(','), after_step: group.cursor, limit: PAGE });
      if (stopped) return touched;
      for (const { key, step, value } of body.values) {
        if (!byKey.has(key)) byKey.set(key, []);
        byKey.get(key).push({ step, value });
        touched.add(key);
      }
      if (body.next !== null) group.cursor = body.next;
      // A page never ends inside a step and a step holds at most one value per key, so a
      // page shorter than that margin was the last one.
      if (body.values.length <= PAGE - group.keys.length) break;
    }
    return touched;
  }

  async function fetchAll(keys) {
    const seen = new Set(groups.flatMap((g) => g.keys));
    const fresh = keys.filter((k) => !seen.has(k));
    if (fresh.length) groups.push({ keys: fresh, cursor: null });
    const touched = new Set();
    for (const g of groups) await fetchNew(g, touched);
    return touched;
  }

  function render(touched) {
    for (const key of [...touched].sort()) {
      const entries = byKey.get(key);
      if (!widgets.has(key)) {
        const kind = kindOf(entries[entries.length - 1].value);
        const w = widgetFor(ctx, kind);
        widgets.set(key, w);
        const card = h('section', { class: 'card media-item', 'data-key': key, 'data-kind': kind },
          h('h2', null, key, h('span', { class: 'muted kind' }, ` ${kind}`)), w.el);
        // Keys stay in name order as new ones arrive.
        const next = [...list.children].find((c) => c.dataset.key > key);
        list.insertBefore(card, next ?? null);
      }
      widgets.get(key).update(entries);
    }
    if (widgets.size) empty.remove(); else el.append(empty);
  }

  render(await fetchAll(ctx.keys.values));
  return {
    refresh: async (c) => render(await fetchAll(c.keys.values)),
    destroy: () => { stopped = true; },
  };
}

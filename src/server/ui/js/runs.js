// #/p/<project> : the runs table. Sort, filter, choose and pin columns, select runs to compare.
//
// Up to one page (1,000 runs) everything happens in the browser; past that, sorting and
// filtering go to the server and rows are fetched by the page as they scroll into view.
// Either way only the rows in view (plus a margin) are in the DOM, and the table has a fixed
// layout, so 1,000 runs with hundreds of columns sort and draw in a few milliseconds.

import { get, projectUrl } from './api.js';
import { debounce, esc, fmtDuration, fmtTime, fmtValue, h, notice, runDuration, runStart } from './dom.js';
import {
  BASE_COLUMNS, CLIENT_ONLY, FilterError, fieldValue, matches, nestedColumns, parseFilter,
  serverFilters, sortRuns,
} from './filter.js';

const PAGE = 1000; // the API's largest page: up to this, the browser holds every run
const SERVER_PAGE = 200;
const ROW_H = 30; // px; must match `.runs tbody tr` in app.css
const OVERSCAN = 15;
const DEFAULT_NESTED = 100; // config/summary columns shown until the user chooses
// Past this many columns, body cells are drawn only for the columns in view (headers stay).
const WINDOW_COLUMNS = 30;
const COL_OVERSCAN = 3;
const WIDTH = { select: 34, state: 86, name: 200, tags: 150, created: 170, duration: 90 };
const NESTED_W = 110;
const width = (col) => WIDTH[col] ?? NESTED_W;

function loadPrefs(project) {
  try {
    return JSON.parse(localStorage.getItem(`runbus.runs.${project}`)) || {};
  } catch (_) {
    return {};
  }
}

export async function mountRuns(root, route, page) {
  const project = route.project;
  page.crumbs([{ text: project }]);
  const prefs = loadPrefs(project);
  const st = {
    all: [], // client mode: every run; server mode: unused
    view: [], // client mode: the filtered, sorted runs
    serverMode: false,
    total: 0, // runs in the project
    count: 0, // runs matching the filter
    pages: new Map(), // server mode: page index -> runs (or a pending promise)
    generation: 0, // bumps when sort/filter change, so stale page fetches are dropped
    sort: prefs.sort || { field: 'created', desc: true },
    terms: [],
    columns: [...BASE_COLUMNS],
    shown: new Set(prefs.shown || []),
    hidden: new Set(prefs.hidden || []),
    pinned: (prefs.pinned || []).filter((c) => c !== 'select'),
    selected: new Set(),
    range: [-1, -1],
  };
  const savePrefs = () => {
    const p = {
      sort: st.sort, shown: [...st.shown], hidden: [...st.hidden], pinned: st.pinned, filter: prefs.filter,
    };
    try { localStorage.setItem(`runbus.runs.${project}`, JSON.stringify(p)); } catch (_) { /* full */ }
  };

  // ---- DOM
  const filterInput = h('input', {
    type: 'search', 'data-testid': 'runs-filter', class: 'filter', spellcheck: 'false',
    placeholder: 'filter: config.lr>=0.01 and state=finished, or text in name/tags',
    value: prefs.filter || '',
  });
  const filterError = h('div', { class: 'filter-error', 'data-testid': 'filter-error', hidden: true, role: 'alert' });
  const totalEl = h('span', { 'data-testid': 'runs-total' }, '0');
  const ofTotal = h('span', { class: 'muted' });
  const compareBtn = h('button', { 'data-testid': 'compare-button', disabled: true }, 'Compare');
  const colsBtn = h('button', { 'data-testid': 'columns-button', 'aria-expanded': 'false' }, 'Columns');
  const colPanel = h('div', { class: 'colpanel', 'data-testid': 'columns-panel', hidden: true });
  const thead = h('thead');
  const tbody = h('tbody');
  const colgroup = h('colgroup');
  const table = h('table', { class: 'runs', 'data-testid': 'runs-table' }, colgroup, thead, tbody);
  const scroller = h('div', { class: 'runs-scroll' }, table);
  root.append(
    h('div', { class: 'toolbar' },
      h('h1', null, project),
      h('span', { class: 'count' }, totalEl, ' runs', ofTotal),
      h('span', { class: 'spacer' }),
      compareBtn, colsBtn),
    h('div', { class: 'filterbar' }, filterInput, filterError),
    colPanel,
    scroller);

  // ---- columns
  const visibleColumns = () => {
    let nested = 0;
    const vis = st.columns.filter((c) => {
      if (c === 'name') return true;
      if (st.shown.has(c)) return true;
      if (st.hidden.has(c)) return false;
      if (BASE_COLUMNS.includes(c)) return true;
      return nested++ < DEFAULT_NESTED;
    });
    const pinned = st.pinned.filter((c) => vis.includes(c));
    return { pinned, cols: [...pinned, ...vis.filter((c) => !pinned.includes(c))] };
  };

  const label = (col) => {
    const dot = col.indexOf('.');
    if (dot < 0) return esc(col);
    return `<span class="grp">${esc(col.slice(0, dot))}</span>${esc(col.slice(dot + 1))}`;
  };

  // cols: shown columns, pinned first; left: px offsets of the sticky ones;
  // starts: each column's x from the table's left edge.
  let layout = null;
  function renderHead() {
    const { pinned, cols } = visibleColumns();
    const left = [0];
    let x = width('select');
    for (const c of pinned) { left.push(x); x += width(c); }
    const pinnedWidth = x;
    const starts = [];
    x = width('select');
    for (const c of cols) { starts.push(x); x += width(c); }
    layout = { cols, pinnedCount: pinned.length, left, starts, pinnedWidth };
    const total = cols.reduce((s, c) => s + width(c), width('select'));
    table.style.width = `${total}px`;
    colgroup.innerHTML = `<col style="width:${width('select')}px">` +
      cols.map((c) => `<col style="width:${width(c)}px">`).join('');
    const allSel = st.count > 0 && st.selected.size >= st.count;
    let html = `<tr><th class="sel pin" style="left:0"><input type="checkbox" data-testid="select-all" ` +
      `title="select every run that matches"${allSel ? ' checked' : ''}></th>`;
    cols.forEach((c, i) => {
      const sorted = st.sort.field === c;
      const pin = i < pinned.length ? ` pin" data-pinned="true" style="left:${left[i + 1]}px` : '';
      const aria = sorted ? ` aria-sort="${st.sort.desc ? 'descending' : 'ascending'}"` : '';
      const numeric = c !== 'name' && c !== 'tags' && c !== 'state' ? ' num' : '';
      html += `<th data-col="${esc(c)}" class="sortable${numeric}${pin}"${aria} title="${esc(c)}">` +
        `${label(c)}<span class="arrow">${sorted ? (st.sort.desc ? '▼' : '▲') : ''}</span></th>`;
    });
    thead.innerHTML = `${html}</tr>`;
  }

  function cell(run, col, i) {
    const pinned = i < layout.pinnedCount;
    const open = (cls, title) => {
      const c = [pinned ? 'pin' : '', cls].filter(Boolean).join(' ');
      return `<td data-col="${esc(col)}"${c ? ` class="${c}"` : ''}` +
        `${pinned ? ` style="left:${layout.left[i + 1]}px"` : ''}${title ? ` title="${title}"` : ''}>`;
    };
    if (col === 'name') {
      const href = `#/p/${encodeURIComponent(project)}/r/${encodeURIComponent(run.run_id)}/overview`;
      return `${open('', esc(run.run_id))}<a data-testid="run-link" href="${href}">` +
        `${esc(run.name || run.run_id)}</a></td>`;
    }
    if (col === 'state') {
      return `${open('')}<span class="badge s-${esc(run.state)}">${esc(run.state)}</span></td>`;
    }
    if (col === 'tags') {
      const tags = (run.tags || []).map((t) => `<span class="tag">${esc(t)}</span>`).join('');
      return `${open('', esc((run.tags || []).join(', ')))}${tags}</td>`;
    }
    if (col === 'created') return `${open('num')}${fmtTime(runStart(run))}</td>`;
    if (col === 'duration') return `${open('num')}${fmtDuration(runDuration(run))}</td>`;
    const v = fieldValue(run, col);
    const text = esc(fmtValue(v));
    return `${open(typeof v === 'number' ? 'num' : '', text)}${text}</td>`;
  }

  /** The unpinned columns [from, to) to draw cells for: all, or those in view when many. */
  function columnWindow() {
    const { cols, pinnedCount, starts } = layout;
    if (cols.length <= WINDOW_COLUMNS) return [pinnedCount, cols.length];
    const lo = scroller.scrollLeft + layout.pinnedWidth;
    const hi = scroller.scrollLeft + scroller.clientWidth;
    let from = pinnedCount;
    while (from < cols.length - 1 && starts[from + 1] <= lo) from++;
    let to = from;
    while (to < cols.length && starts[to] < hi) to++;
    return [Math.max(pinnedCount, from - COL_OVERSCAN), Math.min(cols.length, to + COL_OVERSCAN)];
  }

  const rowAt = (i) => {
    if (!st.serverMode) return st.view[i];
    const pg = st.pages.get(Math.floor(i / SERVER_PAGE));
    return Array.isArray(pg) ? pg[i % SERVER_PAGE] : undefined;
  };

  function renderRows(force = false) {
    const n = st.count;
    const top = scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + scroller.clientHeight) / ROW_H) + OVERSCAN);
    const [c0, c1] = columnWindow();
    const range = [first, last, c0, c1];
    if (!force && range.every((v, i) => st.range[i] === v)) return;
    st.range = range;
    const span = layout.cols.length + 1;
    const { cols, pinnedCount } = layout;
    // Columns out of view are one empty cell spanning them: the fixed layout keeps widths.
    const gapL = c0 > pinnedCount ? `<td class="gap" colspan="${c0 - pinnedCount}"></td>` : '';
    const gapR = c1 < cols.length ? `<td class="gap" colspan="${cols.length - c1}"></td>` : '';
    const shown = [];
    for (let j = 0; j < pinnedCount; j++) shown.push(j);
    const mid = [];
    for (let j = c0; j < c1; j++) mid.push(j);
    let html = first > 0 ? `<tr class="spacer" style="height:${first * ROW_H}px"><td colspan="${span}"></td></tr>` : '';
    const missing = new Set();
    for (let i = first; i < last; i++) {
      const run = rowAt(i);
      if (!run) {
        missing.add(Math.floor(i / SERVER_PAGE));
        html += `<tr class="loading"><td colspan="${span}">…</td></tr>`;
        continue;
      }
      const sel = st.selected.has(run.run_id);
      html += `<tr data-run-id="${esc(run.run_id)}"${sel ? ' class="selected"' : ''}>` +
        `<td class="sel pin" style="left:0"><input type="checkbox" data-testid="select-run"${sel ? ' checked' : ''} ` +
        `aria-label="select ${esc(run.name || run.run_id)}"></td>` +
        shown.map((j) => cell(run, cols[j], j)).join('') + gapL +
        mid.map((j) => cell(run, cols[j], j)).join('') + gapR + '</tr>';
    }
    if (last < n) html += `<tr class="spacer" style="height:${(n - last) * ROW_H}px"><td colspan="${span}"></td></tr>`;
    tbody.innerHTML = html;
    for (const p of missing) fetchPage(p);
  }

  function showCount() {
    totalEl.textContent = String(st.count);
    ofTotal.textContent = st.count !== st.total ? ` (of ${st.total})` : '';
  }

  function render() {
    showCount();
    renderHead();
    renderRows(true);
    updateCompare();
  }

  // ---- data
  async function fetchPage(p) {
    if (st.pages.has(p)) return;
    const gen = st.generation;
    st.pages.set(p, 'pending');
    try {
      const body = await get(`${projectUrl(project)}/runs`, {
        filter: st.serverFilters, sort: (st.sort.desc ? '-' : '') + st.sort.field,
        limit: SERVER_PAGE, offset: p * SERVER_PAGE,
      });
      if (gen !== st.generation) return;
      st.pages.set(p, body.runs);
      st.count = body.total;
      showCount();
      renderRows(true);
    } catch (e) {
      if (gen === st.generation) { st.pages.delete(p); showError(e.message); }
    }
  }

  function apply() {
    if (!st.serverMode) {
      st.view = st.all.filter((r) => matches(r, st.terms));
      sortRuns(st.view, st.sort.field, st.sort.desc);
      st.count = st.view.length;
      render();
      return;
    }
    try {
      if (CLIENT_ONLY.has(st.sort.field) || st.sort.field === 'tags') {
        throw new FilterError(`sorting by ${st.sort.field} needs every run loaded (projects up to ${PAGE} runs)`);
      }
      st.serverFilters = serverFilters(st.terms);
    } catch (e) {
      showError(e.message);
      return;
    }
    st.generation++;
    st.pages.clear();
    st.range = [-1, -1];
    scroller.scrollTop = 0;
    render();
    fetchPage(0);
  }

  function showError(msg) {
    filterError.textContent = msg || '';
    filterError.hidden = !msg;
    filterInput.classList.toggle('invalid', Boolean(msg));
  }

  function applyFilter() {
    const text = filterInput.value;
    try {
      st.terms = parseFilter(text);
      showError('');
    } catch (e) {
      if (!(e instanceof FilterError)) throw e;
      showError(e.message);
      return;
    }
    prefs.filter = text;
    savePrefs();
    apply();
  }

  // ---- selection and compare
  function updateCompare() {
    compareBtn.disabled = st.selected.size === 0;
    compareBtn.textContent = st.selected.size ? `Compare (${st.selected.size})` : 'Compare';
  }
  compareBtn.addEventListener('click', () => {
    const ids = [...st.selected].map(encodeURIComponent).join(',');
    location.hash = `#/p/${encodeURIComponent(project)}/compare?runs=${ids}`;
  });
  tbody.addEventListener('change', (ev) => {
    const box = ev.target.closest('input[data-testid=select-run]');
    if (!box) return;
    const id = box.closest('tr').dataset.runId;
    if (box.checked) st.selected.add(id); else st.selected.delete(id);
    box.closest('tr').classList.toggle('selected', box.checked);
    updateCompare();
  });
  thead.addEventListener('change', (ev) => {
    if (!ev.target.matches('input[data-testid=select-all]')) return;
    if (!ev.target.checked) st.selected.clear();
    else if (!st.serverMode) st.view.forEach((r) => st.selected.add(r.run_id));
    else for (const pg of st.pages.values()) if (Array.isArray(pg)) pg.forEach((r) => st.selected.add(r.run_id));
    renderRows(true);
    updateCompare();
  });

  // ---- sorting
  thead.addEventListener('click', (ev) => {
    const th = ev.target.closest('th[data-col]');
    if (!th) return;
    const field = th.dataset.col;
    st.sort = st.sort.field === field ? { field, desc: !st.sort.desc } : { field, desc: false };
    savePrefs();
    apply();
  });

  // ---- column chooser
  function renderColPanel() {
    const { cols } = visibleColumns();
    const shown = new Set(cols);
    const search = h('input', { type: 'search', placeholder: 'find a column', class: 'colsearch' });
    const list = h('div', { class: 'collist' });
    const fill = () => {
      const q = search.value.toLowerCase();
      list.replaceChildren(...st.columns.filter((c) => c.toLowerCase().includes(q)).map((c) => {
        const pinned = st.pinned.includes(c);
        return h('div', { class: 'colrow', dataset: { col: c } },
          h('label', null,
            h('input', { type: 'checkbox', 'data-testid': 'column-toggle', 'data-col': c,
              checked: shown.has(c), disabled: c === 'name' }),
            ' ', c),
          h('button', { 'data-testid': 'column-pin', 'data-col': c, class: 'pinbtn',
            'aria-pressed': pinned ? 'true' : 'false', title: pinned ? 'unpin' : 'pin to the left' },
            pinned ? 'unpin' : 'pin'));
      }));
    };
    search.addEventListener('input', fill);
    fill();
    colPanel.replaceChildren(
      h('div', { class: 'colpanel-head' }, search,
        h('button', { onclick: () => { st.columns.forEach((c) => { st.shown.add(c); st.hidden.delete(c); }); changed(); } }, 'show all'),
        h('button', { onclick: () => { st.columns.forEach((c) => { if (c !== 'name') { st.hidden.add(c); st.shown.delete(c); } }); changed(); } }, 'hide all'),
        h('button', { onclick: () => toggleColPanel(false) }, 'close')),
      list);
  }
  const changed = () => { savePrefs(); renderColPanel(); render(); };
  colPanel.addEventListener('change', (ev) => {
    const box = ev.target.closest('input[data-testid=column-toggle]');
    if (!box) return;
    const c = box.dataset.col;
    if (box.checked) { st.shown.add(c); st.hidden.delete(c); } else { st.hidden.add(c); st.shown.delete(c); }
    savePrefs();
    render();
  });
  colPanel.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button[data-testid=column-pin]');
    if (!btn) return;
    const c = btn.dataset.col;
    if (st.pinned.includes(c)) st.pinned = st.pinned.filter((x) => x !== c);
    else {
      st.pinned.push(c);
      st.shown.add(c);
      st.hidden.delete(c);
    }
    btn.setAttribute('aria-pressed', st.pinned.includes(c) ? 'true' : 'false');
    btn.textContent = st.pinned.includes(c) ? 'unpin' : 'pin';
    const box = btn.parentElement.querySelector('input[data-testid=column-toggle]');
    if (box) box.checked = true;
    savePrefs();
    render();
  });
  function toggleColPanel(open) {
    colPanel.hidden = !open;
    colsBtn.setAttribute('aria-expanded', String(open));
    if (open) renderColPanel();
  }
  colsBtn.addEventListener('click', () => toggleColPanel(colPanel.hidden));

  // ---- events
  const debounced = debounce(applyFilter, 300);
  filterInput.addEventListener('input', debounced);
  filterInput.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') { debounced.cancel(); applyFilter(); }
  });
  let frame = 0;
  const onScroll = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; renderRows(); });
  };
  scroller.addEventListener('scroll', onScroll, { passive: true });
  window.addEventListener('resize', onScroll);

  // ---- load
  const first = await get(`${projectUrl(project)}/runs`, { limit: PAGE, sort: '-created' });
  st.total = first.total;
  st.serverMode = first.total > first.runs.length;
  st.columns = [...BASE_COLUMNS, ...nestedColumns(first.runs)];
  if (!st.serverMode) st.all = first.runs;
  if (!st.total) {
    root.append(notice(`No runs in ${project} yet.`));
  }
  try {
    st.terms = parseFilter(filterInput.value);
  } catch (e) {
    showError(e.message);
    st.terms = [];
  }
  if (!st.columns.includes(st.sort.field) && !['id', 'group', 'notes'].includes(st.sort.field)) {
    st.sort = { field: 'created', desc: true };
  }
  apply();

  return () => {
    debounced.cancel();
    window.removeEventListener('resize', onScroll);
    if (frame) cancelAnimationFrame(frame);
    st.generation++;
  };
}

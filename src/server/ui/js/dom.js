// Small DOM and formatting helpers shared by every page.

/**
 * Create an element: h('a', {href: '#/', class: 'x', dataset: {key: 'k'}, onclick: fn}, 'text', child).
 * Attributes with value null/undefined/false are left out; `true` sets an empty attribute.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'value' || k === 'checked' || k === 'disabled') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Escape text for HTML built as a string (the runs table, for speed). */
export const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

/** A number as people read it: 5 significant digits, exponent when tiny or huge. */
export function fmtNum(v) {
  if (typeof v !== 'number') return v === null || v === undefined ? '' : String(v);
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a >= 1e6 && a < 1e13) return String(Math.round(v * 100) / 100); // timestamps, byte counts
  if (a !== 0 && (a >= 1e13 || a < 1e-4)) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}

const SI = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
/** A number for an axis tick: short, with k/M/G/T from 10,000 up. */
export function fmtTick(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return fmtNum(v);
  const a = Math.abs(v);
  if (a >= 1e4 && a < 1e15) {
    const [n, s] = SI.find(([n]) => a >= n);
    return `${Number((v / n).toPrecision(3))}${s}`;
  }
  return String(Number(v.toPrecision(4))); // 0.0001, 1e-7: short either way
}

/** Any JSON value for a table cell: numbers formatted, media references named. */
export function fmtValue(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return fmtNum(v);
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'object' && !Array.isArray(v) && typeof v._type === 'string') {
    if (v._type === 'histogram') return `histogram (${(v.counts || []).length} bins)`;
    if (v._type === 'table') return `table (${v.rows ?? '?'} rows)`;
    return v.path ? `${v._type}: ${v.path.split('/').pop()}` : v._type;
  }
  return JSON.stringify(v, (_k, x) => (typeof x === 'number' && !Number.isFinite(x) ? fmtNum(x) : x));
}

/** Epoch seconds as local date and time. */
export function fmtTime(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Seconds as 1h 02m, 3m 05s or 4.2s. */
export function fmtDuration(s) {
  if (typeof s !== 'number' || !Number.isFinite(s) || s < 0) return '';
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

/** Bytes as 1.5 KiB, 3.2 MiB. */
export function fmtBytes(n) {
  if (typeof n !== 'number') return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/**
 * When a run started, in epoch seconds: its own clock (metadata start_ts), since the
 * server's `created` is when it first heard of the run (later, for a run synced afterwards).
 */
export function runStart(run) {
  const ts = run.metadata && run.metadata.start_ts;
  return typeof ts === 'number' && Number.isFinite(ts) ? ts : run.created;
}

/** A run's duration in seconds: to its end, or to now while it runs. */
export function runDuration(run, now = Date.now() / 1000) {
  const end = run.finished_ts ?? (run.state === 'running' ? now : run.heartbeat_ts);
  return typeof end === 'number' ? Math.max(0, end - runStart(run)) : null;
}

/** A message box for errors and empty states. */
export function notice(text, cls = 'notice') {
  return h('div', { class: cls }, text);
}

/** Call fn at most once per `ms`, with the last arguments. */
export function debounce(fn, ms) {
  let t = null;
  const d = (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  d.cancel = () => clearTimeout(t);
  return d;
}

/** Run colours: distinct, readable on white, stable by index. */
export const PALETTE = [
  '#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf',
  '#7f7f7f', '#bcbd22', '#393b79', '#ad494a', '#637939', '#e6550d', '#7b4173', '#3182bd',
];
export const color = (i) => PALETTE[i % PALETTE.length];

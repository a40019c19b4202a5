// Chart data without the DOM: which panel a key goes to, smoothing, and the per-line arrays a
// chart draws (appended to live, and merged pairwise so a panel never holds far more points
// than it has pixels).

/** Section of a metric: the part before the first '/', or 'other'. */
export function sectionOf(key) {
  const i = key.indexOf('/');
  return i > 0 ? key.slice(0, i) : 'other';
}

/** Chart panels for history keys: one per key (internal `_` keys left out), by section. */
export function historyPanels(keys) {
  return keys.filter((k) => !k.startsWith('_')).map((key) => ({
    key, section: sectionOf(key), lines: [{ key, label: key }],
  }));
}

// system/gpu_<i>/<metric> and system/cpu/core_<i>: one panel, one line per GPU or core.
const PER_DEVICE = [
  [/^system\/gpu_(\d+)\/(.+)$/, (m) => `system/gpu_*/${m[2]}`, (m) => `gpu ${m[1]}`],
  [/^system\/cpu\/core_(\d+)$/, () => 'system/cpu/core_*', (m) => `core ${m[1]}`],
];

/**
 * Chart panels for system keys: per-GPU metrics share one panel (key `system/gpu_*` then
 * the metric name, a line per GPU), as do per-core CPU percentages; sections by the part
 * after `system/`.
 */
export function systemPanels(keys) {
  const panels = new Map();
  for (const key of keys) {
    let panelKey = key;
    let label = key;
    let index = 0;
    for (const [re, name, lab] of PER_DEVICE) {
      const m = re.exec(key);
      if (m) { panelKey = name(m); label = lab(m); index = Number(m[1]); break; }
    }
    const parts = panelKey.split('/');
    const section = parts[0] === 'system' && parts.length > 2 ? parts[1].replace(/_\*$/, '') : sectionOf(panelKey);
    if (!panels.has(panelKey)) panels.set(panelKey, { key: panelKey, section, lines: [] });
    panels.get(panelKey).lines.push({ key, label, index });
  }
  for (const p of panels.values()) p.lines.sort((a, b) => a.index - b.index);
  return [...panels.values()];
}

/** The define_metric step metric of `key` (exact name first, then the longest glob), or null. */
export function stepMetricFor(key, metrics) {
  if (!metrics) return null;
  const exact = metrics[key];
  if (exact) return exact.step_metric || null;
  let best = null;
  let bestLen = -1;
  for (const [pattern, def] of Object.entries(metrics)) {
    if (!pattern.endsWith('*')) continue;
    const prefix = pattern.slice(0, -1);
    if (key.startsWith(prefix) && prefix.length > bestLen) { best = def; bestLen = prefix.length; }
  }
  return best ? best.step_metric || null : null;
}

const finite = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/**
 * A line from an API series: x, y (each bucket's last value, or the raw value), lo/hi (the
 * bucket's min/max), with non-finite values as null (a gap). Sorted by x when x is a logged
 * metric, which need not grow with the step.
 */
export function lineFromSeries(s) {
  let x = s.x;
  let y = s.last.map(finite);
  let lo = s.min.map(finite);
  let hi = s.max.map(finite);
  let ascending = true;
  for (let i = 1; i < x.length; i++) if (x[i] < x[i - 1]) { ascending = false; break; }
  if (!ascending) {
    const order = x.map((_, i) => i).sort((a, b) => x[a] - x[b] || a - b);
    x = order.map((i) => s.x[i]);
    y = order.map((i) => y[i]);
    lo = order.map((i) => lo[i]);
    hi = order.map((i) => hi[i]);
  }
  return { x, y, lo, hi, downsampled: Boolean(s.downsampled), cursor: s.cursor ?? null };
}

/** An empty line (a key with no points yet on this axis). */
export const emptyLine = () => ({ x: [], y: [], lo: [], hi: [], downsampled: false, cursor: null });

/** Append a live (raw) series to a line; keeps x ascending by inserting out-of-order points. */
export function appendSeries(line, s) {
  const add = lineFromSeries(s);
  if (!add.x.length) return line;
  const lastX = line.x.length ? line.x[line.x.length - 1] : -Infinity;
  if (add.x[0] >= lastX) {
    line.x = line.x.concat(add.x);
    line.y = line.y.concat(add.y);
    line.lo = line.lo.concat(add.lo);
    line.hi = line.hi.concat(add.hi);
  } else {
    const merged = lineFromSeries({
      x: line.x.concat(add.x), last: line.y.concat(add.y), min: line.lo.concat(add.lo),
      max: line.hi.concat(add.hi), downsampled: line.downsampled, cursor: add.cursor,
    });
    Object.assign(line, { x: merged.x, y: merged.y, lo: merged.lo, hi: merged.hi });
  }
  line.downsampled = line.downsampled || add.downsampled;
  if (add.cursor !== null && (line.cursor === null || add.cursor > line.cursor)) line.cursor = add.cursor;
  return line;
}

const minN = (a, b) => (a === null ? b : b === null ? a : Math.min(a, b));
const maxN = (a, b) => (a === null ? b : b === null ? a : Math.max(a, b));

/**
 * Merge neighbouring points pairwise until the line has at most 2 x `target` points: x of the
 * first, last value of the second, min and max of both. Marks the line downsampled.
 */
export function compact(line, target) {
  while (line.x.length > 2 * target) {
    const n = Math.floor(line.x.length / 2);
    const odd = line.x.length % 2;
    const x = new Array(n + odd);
    const y = new Array(n + odd);
    const lo = new Array(n + odd);
    const hi = new Array(n + odd);
    for (let i = 0; i < n; i++) {
      const a = 2 * i;
      x[i] = line.x[a];
      y[i] = line.y[a + 1] ?? line.y[a];
      lo[i] = minN(line.lo[a], line.lo[a + 1]);
      hi[i] = maxN(line.hi[a], line.hi[a + 1]);
    }
    if (odd) {
      const a = line.x.length - 1;
      x[n] = line.x[a]; y[n] = line.y[a]; lo[n] = line.lo[a]; hi[n] = line.hi[a];
    }
    Object.assign(line, { x, y, lo, hi, downsampled: true });
  }
  return line;
}

/**
 * Exponential moving average with the start debiased (as TensorBoard smooths): `weight` 0
 * returns the values, 0.99 smooths hard. Gaps (null) stay gaps and do not reset the average.
 */
export function ema(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let acc = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) { out[i] = v; continue; }
    acc = acc * weight + (1 - weight) * v;
    n++;
    out[i] = acc / (1 - weight ** n);
  }
  return out;
}

/** Whether a line's band (min..max) differs from its line anywhere: only then is it drawn. */
export const hasBand = (line) => line.downsampled && line.lo.some((v, i) => v !== line.hi[i]);

// Run fields, the filter language of the runs table, and sorting: the same rules as the
// server's runs query (docs/server-api.md), so a filter reads alike on both sides.

import { runDuration, runStart } from './dom.js';

export const STATES = ['running', 'finished', 'failed', 'crashed'];
/** Columns every run has, in table order. */
export const BASE_COLUMNS = ['state', 'name', 'tags', 'created', 'duration'];
const NUMERIC = new Set(['created', 'duration', 'heartbeat', 'finished', 'exit_code', 'last_seq']);
const TEXT = new Set(['state', 'name', 'id', 'group', 'notes']);
const NESTED = ['config', 'summary', 'metadata'];
/** Fields the server cannot filter or sort on: those need every run loaded. */
export const CLIENT_ONLY = new Set(['duration']);

export class FilterError extends Error {}

/** The value of a run field (`config.lr`, `summary.val/acc.best`, `state`, ...); undefined if absent. */
export function fieldValue(run, field) {
  switch (field) {
    case 'state': return run.state;
    case 'name': return run.name ?? undefined;
    case 'tags': return run.tags || [];
    case 'created': return runStart(run);
    case 'duration': return runDuration(run) ?? undefined;
    case 'id': return run.run_id;
    case 'group': return run.group ?? undefined;
    case 'notes': return run.notes ?? undefined;
    case 'heartbeat': return run.heartbeat_ts;
    case 'finished': return run.finished_ts ?? undefined;
    case 'exit_code': return run.exit_code ?? undefined;
    case 'last_seq': return run.last_seq;
    default: break;
  }
  const dot = field.indexOf('.');
  if (dot < 0) return undefined;
  let v = run[field.slice(0, dot)];
  for (const part of field.slice(dot + 1).split('.')) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
    v = v[part];
  }
  return v;
}

/** Whether a value is a leaf for columns: anything but a plain object (media refs are leaves). */
const isBranch = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) &&
  typeof v._type !== 'string';

/** Column names of the nested fields of runs: `config.lr`, `summary.val/acc.best`, ... */
export function nestedColumns(runs, heads = ['config', 'summary']) {
  const seen = new Set();
  const walk = (prefix, obj) => {
    for (const [k, v] of Object.entries(obj)) {
      const name = `${prefix}.${k}`;
      if (isBranch(v)) walk(name, v);
      else seen.add(name);
    }
  };
  for (const run of runs) for (const head of heads) if (run[head]) walk(head, run[head]);
  const order = (s) => heads.indexOf(s.slice(0, s.indexOf('.')));
  return [...seen].sort((a, b) => order(a) - order(b) || (a < b ? -1 : a > b ? 1 : 0));
}

function checkField(field) {
  if (NUMERIC.has(field) || TEXT.has(field) || field === 'tags') return;
  const dot = field.indexOf('.');
  if (dot > 0 && NESTED.includes(field.slice(0, dot)) && dot < field.length - 1) return;
  throw new FilterError(
    `unknown field '${field}': use config.<key>, summary.<key>, metadata.<key>, ` +
    'state, name, tags, created, duration, id, group or notes');
}

const TERM = /^([A-Za-z_][\w./-]*?)\s*(>=|<=|!=|=|<|>|~)\s*(.*)$/s;

function parseValue(text) {
  try {
    const v = JSON.parse(text);
    if (v === null || ['number', 'string', 'boolean'].includes(typeof v)) return v;
  } catch (_) { /* plain text */ }
  return text;
}

/**
 * Parse a filter: terms joined by `and`, `&&` or `;`. A term is `field OP value` with OP one
 * of = != < <= > >= ~ (contains), or plain text, which matches a run's name, id or tags.
 * The value is JSON when it parses (0.01, true, null, "quoted"), else text.
 * Returns [{field, op, value}] (plain text: {text}); throws FilterError naming the problem.
 */
export function parseFilter(input) {
  const terms = [];
  for (const raw of input.split(/\s+and\s+|\s*&&\s*|\s*;\s*/i)) {
    const term = raw.trim();
    if (!term) continue;
    const m = TERM.exec(term);
    if (!m) {
      if (/^\s*(>=|<=|!=|=|<|>|~)/.test(term)) {
        throw new FilterError(`'${term}' has no field before the operator (e.g. config.lr>=0.01)`);
      }
      terms.push({ text: term });
      continue;
    }
    const [, field, op, rawValue] = m;
    checkField(field);
    const valueText = rawValue.trim();
    if (!valueText) throw new FilterError(`'${term}' has no value after '${op}'`);
    const value = parseValue(valueText);
    if (['<', '<=', '>', '>='].includes(op) && (typeof value === 'boolean' || value === null)) {
      throw new FilterError(`'${term}': ${op} compares numbers or text, not ${valueText}`);
    }
    if (op === '~' && typeof value !== 'string') {
      throw new FilterError(`'${term}': ~ (contains) takes text; quote it: ${field}~"${valueText}"`);
    }
    if (NUMERIC.has(field) && typeof value !== 'number' && value !== null) {
      throw new FilterError(`'${term}': ${field} is a number; compare it with a number`);
    }
    if (TEXT.has(field) && typeof value !== 'string' && value !== null) {
      throw new FilterError(`'${term}': ${field} is text; compare it with text (quote numbers)`);
    }
    if (field === 'state' && op === '=' && !STATES.includes(value)) {
      throw new FilterError(`'${term}': state is one of ${STATES.join(', ')}`);
    }
    if (field === 'tags' && op !== '=' && op !== '~') {
      throw new FilterError(`'${term}': tags take = or ~ (a run has the tag)`);
    }
    terms.push({ field, op, value });
  }
  return terms;
}

function cmp(a, op, b) {
  switch (op) {
    case '=': return a === b;
    case '<': return a < b;
    case '<=': return a <= b;
    case '>': return a > b;
    case '>=': return a >= b;
    default: return false;
  }
}

function matchTerm(run, t) {
  if (t.text !== undefined) {
    const needle = t.text.toLowerCase();
    return (run.name || '').toLowerCase().includes(needle) ||
      run.run_id.toLowerCase().includes(needle) ||
      (run.tags || []).some((tag) => tag.toLowerCase().includes(needle));
  }
  if (t.op === '!=') return !matchTerm(run, { ...t, op: '=' });
  const v = fieldValue(run, t.field);
  if (t.field === 'tags') return v.some((tag) => (t.op === '~' ? tag.includes(t.value) : tag === t.value));
  if (t.value === null) return v === undefined || v === null;
  if (typeof t.value === 'boolean') return v === t.value;
  if (typeof t.value === 'number') return typeof v === 'number' && cmp(v, t.op, t.value);
  if (typeof v !== 'string') return false;
  return t.op === '~' ? v.includes(t.value) : cmp(v, t.op, t.value);
}

/** Whether a run passes every term. */
export const matches = (run, terms) => terms.every((t) => matchTerm(run, t));

/**
 * The terms as the runs API's `filter` parameters, or a FilterError for what only works
 * with every run loaded (duration, plain text over tags).
 */
export function serverFilters(terms) {
  return terms.map((t) => {
    if (t.text !== undefined) return `name~${JSON.stringify(t.text)}`;
    if (CLIENT_ONLY.has(t.field)) {
      throw new FilterError(`${t.field} can only be filtered when the project has at most one page of runs`);
    }
    if (t.field === 'tags') return `tags~${t.value}`;
    const v = typeof t.value === 'string' ? JSON.stringify(t.value) : String(t.value);
    return `${t.field}${t.op}${v}`;
  });
}

const rank = (v) => (typeof v === 'number' && !Number.isNaN(v) ? 0 : typeof v === 'string' ? 1 : 2);

/**
 * Sort runs in place by a field, the way the server does: numbers before text, runs
 * without the field last in both directions, ties by creation time then id.
 */
export function sortRuns(runs, field, desc) {
  const dir = desc ? -1 : 1;
  const keyed = runs.map((run) => {
    let v = fieldValue(run, field);
    if (field === 'tags') v = v.length ? v.join(', ') : undefined;
    return { run, v, r: rank(v) };
  });
  keyed.sort((a, b) => {
    if ((a.r === 2) !== (b.r === 2)) return a.r === 2 ? 1 : -1;
    if (a.r !== b.r) return (a.r - b.r) * dir;
    if (a.r !== 2 && a.v !== b.v) return (a.v < b.v ? -1 : 1) * dir;
    const ca = runStart(a.run);
    const cb = runStart(b.run);
    if (ca !== cb) return (ca - cb) * dir;
    return (a.run.run_id < b.run.run_id ? -1 : a.run.run_id > b.run.run_id ? 1 : 0) * dir;
  });
  for (let i = 0; i < keyed.length; i++) runs[i] = keyed[i].run;
  return runs;
}

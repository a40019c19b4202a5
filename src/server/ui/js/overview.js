// The Overview tab: state, config, summary, metadata, git (with the diff), command, host, GPUs.

import { getFileText } from './api.js';
import { fmtBytes, fmtDuration, fmtTime, fmtValue, h, runDuration, runStart } from './dom.js';

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && typeof v._type !== 'string';

/**
 * A key/value table: one `tr[data-key]` per top-level key, sorted; a nested object is a nested
 * table whose rows carry the dotted key (`os.system`, `val/acc.best`).
 */
export function kvTable(obj, testid, prefix = '') {
  const keys = Object.keys(obj || {}).sort();
  const table = h('table', { class: 'kv', 'data-testid': testid || null });
  if (!keys.length && !prefix) return h('div', { 'data-testid': testid || null, class: 'muted' }, 'nothing recorded');
  const body = h('tbody');
  for (const k of keys) {
    const v = obj[k];
    const full = prefix + k;
    const cell = isObject(v) ? kvTable(v, null, `${full}.`) : h('span', { class: typeof v === 'number' ? 'num' : null }, fmtValue(v));
    if (!isObject(v) && typeof v !== 'number') cell.title = fmtValue(v);
    body.append(h('tr', { 'data-key': full }, h('th', null, k), h('td', null, cell)));
  }
  table.append(body);
  return table;
}

function shellQuote(s) {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replace(/'/g, "'\\''")}'`;
}

function commandLine(md) {
  if (!md.program) return null;
  const prog = md.program.endsWith('.py') || md.program === '-c' || md.program === '-m' ? `python ${md.program}` : md.program;
  return [prog, ...(md.args || []).map(shellQuote)].join(' ');
}

/**
 * A unified diff as one span per line, coloured by kind. Built in a fragment, not spread into
 * `replaceChildren`: a patch of 10 MB has more lines than a call may take arguments.
 */
function diffLines(text) {
  const out = document.createDocumentFragment();
  // +/- mark changed lines only inside a hunk: a file's `--- a/x` and `+++ b/x`
  // header lines are neither removed nor added.
  let inHunk = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('diff ')) inHunk = false;
    else if (line.startsWith('@@')) inHunk = true;
    const cls = line.startsWith('@@') ? 'hunk'
      : !inHunk ? null : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : null;
    out.append(h('span', { class: cls }, `${line}\n`));
  }
  return out;
}

function gitBox(ctx) {
  const git = ctx.run.metadata.git;
  const box = h('div', { 'data-testid': 'run-git', class: 'git' });
  if (!git) {
    box.append(h('span', { class: 'muted' }, 'no git information (not a repository, git missing, or turned off)'));
    return box;
  }
  const remote = git.remote && /^https?:\/\//.test(git.remote)
    ? h('a', { href: git.remote, target: '_blank', rel: 'noopener noreferrer' }, git.remote) : git.remote;
  const rows = [
    ['commit', git.commit ? h('code', { 'data-testid': 'git-commit' }, git.commit) : null],
    ['branch', git.branch],
    ['remote', remote],
    ['dirty', git.dirty === undefined ? null : String(git.dirty)],
    ['root', git.root],
  ];
  box.append(h('table', { class: 'kv' }, h('tbody', null,
    rows.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => h('tr', { 'data-key': k }, h('th', null, k), h('td', null, v))))));
  if (git.dirty) {
    const pre = h('pre', { class: 'diff', 'data-testid': 'git-diff' });
    const details = h('details', null, h('summary', null, `diff.patch (uncommitted changes${git.diff_truncated ? ', truncated' : ''})`), pre);
    let loaded = false;
    details.addEventListener('toggle', async () => {
      if (!details.open || loaded) return;
      loaded = true;
      pre.textContent = 'loading…';
      let text;
      try {
        text = await getFileText(ctx.project, ctx.runId, 'diff.patch');
      } catch (e) {
        pre.textContent = `diff.patch is not on the server (${e.message})`;
        return;
      }
      pre.replaceChildren(diffLines(text));
    });
    box.append(details);
  }
  return box;
}

function hostBox(md) {
  const os = md.os || {};
  const rows = [
    ['host', md.host],
    ['user', md.user],
    ['os', os.platform || [os.system, os.release].filter(Boolean).join(' ')],
    ['python', [md.python_implementation, md.python].filter(Boolean).join(' ')],
    ['cpus', md.cpu_count === undefined ? null : `${md.cpu_count} logical${md.cpu_count_available ? `, ${md.cpu_count_available} available` : ''}`],
    ['memory', md.memory_total ? fmtBytes(md.memory_total) : null],
    ['cwd', md.cwd],
    ['gpus', (md.gpu || []).length ? (md.gpu || []).map((g) => `${g.index}: ${g.name}${g.memory_total_bytes ? ` (${fmtBytes(g.memory_total_bytes)})` : ''}`).join('; ') : null],
    ['driver / CUDA', md.gpu_driver ? `${md.gpu_driver} / ${md.cuda_version || '?'}` : null],
    ['CUDA_VISIBLE_DEVICES', md.cuda_visible_devices],
  ];
  return h('table', { class: 'kv', 'data-testid': 'run-host' }, h('tbody', null,
    rows.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => h('tr', { 'data-key': k }, h('th', null, k), h('td', null, v)))));
}

export function mountOverview(el, ctx) {
  const summaryBox = h('div');
  const stateBox = h('div');
  const card = (title, ...body) => h('section', { class: 'card' }, h('h2', null, title), ...body);

  const renderState = () => {
    const r = ctx.run;
    const md = r.metadata || {};
    const rows = [
      ['state', h('span', { class: `badge s-${r.state}` }, r.state)],
      ['name', r.name],
      ['id', r.run_id],
      ['group', r.group],
      ['tags', (r.tags || []).length ? r.tags.join(', ') : null],
      ['notes', r.notes],
      ['started', fmtTime(runStart(r))],
      ['duration', fmtDuration(runDuration(r))],
      ['ended', r.finished_ts ? fmtTime(r.finished_ts) : null],
      ['exit code', r.exit_code === null ? null : String(r.exit_code)],
      ['command', commandLine(md) ? h('code', { 'data-testid': 'run-command' }, commandLine(md)) : null],
    ];
    stateBox.replaceChildren(h('table', { class: 'kv', 'data-testid': 'run-info' }, h('tbody', null,
      rows.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => h('tr', { 'data-key': k }, h('th', null, k), h('td', null, v))))));
    summaryBox.replaceChildren(kvTable(r.summary, 'run-summary'));
  };
  renderState();

  el.append(h('div', { class: 'overview' },
    h('div', { class: 'col' },
      card('Run', stateBox),
      card('Summary', summaryBox),
      card('Config', kvTable(ctx.run.config, 'run-config'))),
    h('div', { class: 'col' },
      card('Git', gitBox(ctx)),
      card('Host', hostBox(ctx.run.metadata || {})),
      card('Metadata', kvTable(ctx.run.metadata, 'run-metadata')))));
  return { refresh: async () => renderState() };
}

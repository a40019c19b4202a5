// The Logs tab: console output, stderr marked, searchable, following new lines live.

import { get, runUrl } from './api.js';
import { debounce, h } from './dom.js';

const PAGE = 10000; // the API's largest output page

function lineEl(line) {
  const el = document.createElement('div');
  el.className = line.stream === 'stderr' ? 'log-line stderr' : 'log-line';
  el.dataset.line = String(line.line_no);
  el.textContent = line.text;
  return el;
}

/** Show `text` with every occurrence of `needle` (lower case) in a <mark>. */
function highlight(el, text, needle) {
  if (!needle) { el.textContent = text; return; }
  const lower = text.toLowerCase();
  const parts = [];
  let at = 0;
  for (let i = lower.indexOf(needle); i >= 0; i = lower.indexOf(needle, at)) {
    parts.push(text.slice(at, i), h('mark', null, text.slice(i, i + needle.length)));
    at = i + needle.length;
  }
  parts.push(text.slice(at));
  el.replaceChildren(...parts);
}

export async function mountLogs(el, ctx) {
  const url = `${runUrl(ctx.project, ctx.runId)}/output`;
  const search = h('input', { type: 'search', 'data-testid': 'logs-search', placeholder: 'search the output', class: 'logs-search' });
  const follow = h('input', { type: 'checkbox', 'data-testid': 'logs-follow', checked: ctx.run.state === 'running' });
  const stderrOnly = h('input', { type: 'checkbox', 'data-testid': 'logs-stderr-only' });
  const count = h('span', { class: 'muted' });
  const box = h('div', { class: 'logs', 'data-testid': 'logs', tabindex: '0' });
  el.append(
    h('div', { class: 'logs-bar' }, search,
      h('label', null, follow, ' follow'),
      h('label', null, stderrOnly, ' stderr only'), count),
    box);

  const lines = [];
  let next = 0;
  let needle = '';

  const visible = (line) => (!stderrOnly.checked || line.stream === 'stderr') &&
    (!needle || line.text.toLowerCase().includes(needle));

  function append(newLines) {
    box.querySelector('.empty')?.remove();
    const frag = document.createDocumentFragment();
    for (const line of newLines) {
      const e = lineEl(line);
      if (!visible(line)) e.hidden = true;
      else if (needle) highlight(e, line.text, needle);
      frag.append(e);
    }
    box.append(frag);
    lines.push(...newLines);
    updateCount();
    if (follow.checked) box.scrollTop = box.scrollHeight;
  }

  function updateCount() {
    const shown = needle || stderrOnly.checked ? lines.filter(visible).length : lines.length;
    count.textContent = shown === lines.length ? `${lines.length} lines` : `${shown} of ${lines.length} lines`;
  }

  function refilter() {
    needle = search.value.trim().toLowerCase();
    const els = box.children;
    for (let i = 0; i < lines.length; i++) {
      const show = visible(lines[i]);
      els[i].hidden = !show;
      if (show) highlight(els[i], lines[i].text, needle);
    }
    updateCount();
  }

  let stopped = false;
  async function fetchNew() {
    for (;;) {
      const body = await get(url, { after_line: next, limit: PAGE });
      if (stopped) return;
      if (body.lines.length) append(body.lines);
      next = body.next;
      if (body.lines.length < PAGE) return;
    }
  }

  await fetchNew();
  if (!lines.length) box.append(h('div', { class: 'muted empty' }, 'no console output'));
  search.addEventListener('input', debounce(refilter, 150));
  stderrOnly.addEventListener('change', refilter);
  follow.addEventListener('change', () => { if (follow.checked) box.scrollTop = box.scrollHeight; });
  // Scrolling up stops following; back at the bottom, following resumes.
  box.addEventListener('scroll', () => {
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 4;
    if (follow.checked !== atBottom && ctx.run.state === 'running') follow.checked = atBottom;
  }, { passive: true });
  return {
    refresh: fetchNew,
    destroy: () => { stopped = true; },
  };
}

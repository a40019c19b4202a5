// The Files tab: every file the run recorded, its size, and links to view or download it.

import { fileUrl, get, runUrl } from './api.js';
import { fmtBytes, fmtTime, h, notice } from './dom.js';

// What a browser shows by itself (the server sends the matching Content-Type).
const VIEWABLE = /\.(txt|log|patch|diff|json|md|csv|ya?ml|toml|py|png|jpe?g|gif|webp|svg|bmp|mp4|webm|wav|mp3|ogg|flac|html?)$/i;

export async function mountFiles(el, ctx) {
  const tbody = h('tbody');
  const table = h('table', { class: 'grid files', 'data-testid': 'files-table' },
    h('thead', null, h('tr', null, h('th', null, 'path'), h('th', { class: 'num' }, 'size'),
      h('th', null, 'sha256'), h('th', null, 'recorded'), h('th', null, ''))),
    tbody);
  const empty = notice('This run recorded no files.');

  async function render() {
    const { files } = await get(`${runUrl(ctx.project, ctx.runId)}/files`);
    tbody.replaceChildren(...files.map((f) => {
      const links = [];
      if (f.stored) {
        if (VIEWABLE.test(f.path)) {
          links.push(h('a', { href: fileUrl(ctx.project, ctx.runId, f.path), target: '_blank', rel: 'noopener', 'data-testid': 'file-view' }, 'view'), ' ');
        }
        links.push(h('a', { href: fileUrl(ctx.project, ctx.runId, f.path, true), download: f.path.split('/').pop(), 'data-testid': 'file-download' }, 'download'));
      } else {
        links.push(h('span', { class: 'muted', title: 'the run recorded this file but its bytes were not uploaded (runbus sync sends them)' }, 'not uploaded'));
      }
      return h('tr', { 'data-path': f.path },
        h('td', null, h('code', null, f.path)),
        h('td', { class: 'num', title: `${f.size} bytes` }, fmtBytes(f.size)),
        h('td', null, h('code', { class: 'muted', title: f.sha256 }, f.sha256.slice(0, 12))),
        h('td', null, fmtTime(f.ts)),
        h('td', null, links));
    }));
    if (files.length) empty.remove(); else el.append(empty);
  }

  el.append(table);
  await render();
  let ticks = 0;
  // The list only grows when the run saves a file: look every few live updates.
  return { refresh: () => (++ticks % 5 === 0 || ctx.run.state !== 'running' ? render() : null) };
}

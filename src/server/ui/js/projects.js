// #/ : the projects this key can read.

import { API, get } from './api.js';
import { fmtTime, h, notice } from './dom.js';

export async function mountProjects(root, _route, page) {
  page.crumbs([]);
  const { projects } = await get(`${API}/projects`);
  if (!projects.length) {
    root.append(notice('No projects yet. Log a run with mode="online" (see docs/online.md) and it appears here.'));
    return;
  }
  const rows = projects.map((p) => h('tr', { dataset: { project: p.name } },
    h('td', null, h('a', { href: `#/p/${encodeURIComponent(p.name)}`, 'data-testid': 'project-link' }, p.name)),
    h('td', { class: 'num' }, String(p.run_count)),
    h('td', null, fmtTime(p.last_activity))));
  root.append(h('h1', null, 'Projects'),
    h('table', { class: 'grid', 'data-testid': 'projects-table' },
      h('thead', null, h('tr', null, h('th', null, 'project'), h('th', { class: 'num' }, 'runs'),
        h('th', null, 'last activity'))),
      h('tbody', null, rows)));
}

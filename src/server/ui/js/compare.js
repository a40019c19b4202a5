// #/p/<project>/compare?runs=a,b : the selected runs' metrics overlaid, a colour per run.

import { get, runUrl } from './api.js';
import { ChartGrid } from './charts.js';
import { color, h, notice } from './dom.js';
import { Poller } from './live.js';
import { historyPanels } from './series.js';

export async function mountCompare(root, route, page) {
  const { project } = route;
  const ids = [...new Set((route.query.get('runs') || '').split(',').filter(Boolean))];
  page.crumbs([{ text: project, href: `#/p/${encodeURIComponent(project)}` }, { text: 'compare' }]);
  if (!ids.length) {
    root.append(notice('No runs to compare: select runs in the runs table, then press Compare.'));
    return null;
  }
  const loaded = await Promise.all(ids.map((id) => Promise.all([
    get(runUrl(project, id)), get(`${runUrl(project, id)}/keys`),
  ])));
  const runs = loaded.map(([run], i) => ({ id: run.run_id, name: run.name || run.run_id, color: color(i), run }));
  const keyUnion = [...new Set(loaded.flatMap(([, k]) => k.history))].sort();
  const liveEl = h('span', { 'data-testid': 'live-indicator', 'data-live': 'off', class: 'live' }, 'live');
  root.append(
    h('div', { class: 'run-head' }, h('h1', null, `Compare ${runs.length} runs`), liveEl),
    h('ul', { class: 'legend', 'data-testid': 'compare-legend' }, runs.map((r) => h('li', { 'data-run-id': r.id },
      h('i', { style: `background:${r.color}` }),
      h('a', { href: `#/p/${encodeURIComponent(project)}/r/${encodeURIComponent(r.id)}/charts` }, r.name),
      h('span', { class: `badge s-${r.run.state}` }, r.run.state)))));
  const panelsFor = (keys) => historyPanels(keys).map((p) => ({
    ...p, lines: runs.map((r) => ({ key: p.key, label: r.name, runId: r.id, color: r.color })),
  }));
  const grid = new ChartGrid(root, {
    project, runs, source: 'history', testid: 'charts', panels: panelsFor(keyUnion),
    // As on a run page, each metric draws over its define_metric step metric; where the
    // runs define it differently, the first run's definition wins for the shared panel.
    metrics: Object.assign({}, ...runs.map((r) => r.run.metrics || {}).reverse()),
    xMetrics: keyUnion, defaultX: 'auto',
  });
  if (!keyUnion.length) root.append(notice('These runs logged no numeric metrics.'));

  const running = () => runs.filter((r) => r.run.state === 'running');
  const poller = new Poller(async () => {
    for (const r of running()) r.run = await get(runUrl(project, r.id));
    await grid.refresh();
    return running().length > 0;
  }, { intervalMs: 2000, onActive: (on) => { liveEl.dataset.live = on ? 'on' : 'off'; } });
  if (running().length) poller.start();
  return () => { poller.stop(); grid.destroy(); };
}

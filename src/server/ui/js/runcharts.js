// The Charts and System tabs of a run: a ChartGrid over its history or system keys.

import { ChartGrid } from './charts.js';
import { notice } from './dom.js';
import { historyPanels, systemPanels } from './series.js';

function mountGrid(el, ctx, source) {
  const keys = source === 'system' ? ctx.keys.system : ctx.keys.history;
  const panelsOf = (k) => (source === 'system' ? systemPanels(k) : historyPanels(k));
  const empty = notice(source === 'system'
    ? 'No system metrics for this run (the sampler was off, or its first sample has not come yet).'
    : 'No numeric metrics logged yet.');
  if (!keys.length) el.append(empty);
  const grid = new ChartGrid(el, {
    project: ctx.project,
    runs: [{ id: ctx.runId, name: ctx.run.name || ctx.runId }],
    source,
    testid: source === 'system' ? 'system-charts' : 'charts',
    panels: panelsOf(keys),
    metrics: ctx.run.metrics,
    xMetrics: source === 'system' ? [] : ctx.keys.history,
    defaultX: source === 'system' ? '_runtime' : 'auto',
  });
  return {
    async refresh(c) {
      grid.metrics = c.run.metrics;
      const now = source === 'system' ? c.keys.system : c.keys.history;
      if (now.length) empty.remove();
      grid.addPanels(panelsOf(now));
      await grid.refresh();
    },
    destroy: () => grid.destroy(),
  };
}

export const mountCharts = (el, ctx) => mountGrid(el, ctx, 'history');
export const mountSystem = (el, ctx) => mountGrid(el, ctx, 'system');

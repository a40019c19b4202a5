// #/p/<project>/r/<run>/<tab> : one run, its tabs, and the live loop that keeps them current.
//
// While the run is running, the loop asks for the run's last event seq every second (a few
// bytes); only when it moved does it fetch the run record and let the open tab fetch what is
// new after its cursors. It pauses while the browser tab is hidden and stops once the run ends.

import { get, runUrl } from './api.js';
import { fmtDuration, fmtTime, h, runDuration, runStart } from './dom.js';
import { Poller } from './live.js';
import { mountCharts, mountSystem } from './runcharts.js';
import { mountOverview } from './overview.js';
import { mountLogs } from './logs.js';
import { mountFiles } from './files.js';
import { mountMedia } from './media.js';

export const TABS = {
  overview: ['Overview', mountOverview],
  charts: ['Charts', mountCharts],
  system: ['System', mountSystem],
  logs: ['Logs', mountLogs],
  files: ['Files', mountFiles],
  media: ['Media', mountMedia],
};
const KEYS_EVERY = 5; // ticks with news between two looks for new keys

export async function mountRun(root, route, page) {
  const { project, runId } = route;
  const [run, keys] = await Promise.all([
    get(runUrl(project, runId)),
    get(`${runUrl(project, runId)}/keys`),
  ]);
  const ctx = { project, runId, run, keys, page };
  page.crumbs([{ text: project, href: `#/p/${encodeURIComponent(project)}` }, { text: run.name || runId }]);
  document.title = `${run.name || runId} · runbus`;

  const stateEl = h('span', { 'data-testid': 'run-state', class: `badge s-${run.state}` }, run.state);
  const liveEl = h('span', { 'data-testid': 'live-indicator', 'data-live': 'off', class: 'live', title: 'updates live while the run is running' }, 'live');
  const timing = h('span', { class: 'muted run-timing' });
  const tabBar = h('nav', { class: 'tabs', role: 'tablist' });
  const content = h('div', { class: 'tab-content' });
  const tabButtons = {};
  for (const [name, [label]] of Object.entries(TABS)) {
    tabButtons[name] = h('button', {
      role: 'tab', 'data-testid': `tab-${name}`, 'aria-selected': 'false',
      onclick: () => { location.hash = `#/p/${encodeURIComponent(project)}/r/${encodeURIComponent(runId)}/${name}`; },
    }, label);
    tabBar.append(tabButtons[name]);
  }
  root.append(
    h('div', { class: 'run-head' },
      h('h1', null, run.name || runId), stateEl, liveEl, timing,
      h('span', { class: 'muted' }, `id ${runId}`)),
    tabBar, content);

  const showRun = () => {
    const r = ctx.run;
    stateEl.textContent = r.state;
    stateEl.className = `badge s-${r.state}`;
    timing.textContent = `started ${fmtTime(runStart(r))} · ${fmtDuration(runDuration(r))}`;
  };
  showRun();

  let current = null; // {name, view: {refresh?, destroy?}}
  async function showTab(name) {
    if (!TABS[name]) name = 'overview';
    if (current && current.name === name) return;
    current?.view?.destroy?.();
    for (const [n, b] of Object.entries(tabButtons)) b.setAttribute('aria-selected', String(n === name));
    content.replaceChildren();
    const el = h('div', { class: `tab tab-${name}`, role: 'tabpanel' });
    content.append(el);
    const entry = { name, view: null };
    current = entry;
    try {
      entry.view = await TABS[name][1](el, ctx);
    } catch (e) {
      if (current === entry) el.append(h('div', { class: 'notice error' }, e.message));
    }
    if (current !== entry) entry.view?.destroy?.();
  }

  let ticks = 0;
  let news = 0;
  let lastSeq = run.last_seq;
  const poller = new Poller(async () => {
    const { last_seq: seq } = await get(`${runUrl(project, runId)}/last_seq`);
    ticks++;
    // A run that stops sending is read as crashed by the server after a while: look at the
    // record now and then even when nothing new arrived.
    if (seq === lastSeq && ticks % 10 !== 0) return true;
    lastSeq = seq;
    news++;
    ctx.run = await get(runUrl(project, runId));
    if (news % KEYS_EVERY === 1 || ctx.run.state !== 'running') {
      ctx.keys = await get(`${runUrl(project, runId)}/keys`);
    }
    showRun();
    await current?.view?.refresh?.(ctx);
    return ctx.run.state === 'running';
  }, { intervalMs: 1000, onActive: (on) => { liveEl.dataset.live = on ? 'on' : 'off'; } });
  if (run.state === 'running') poller.start();

  await showTab(route.tab);
  return {
    update: (r) => showTab(r.tab),
    unmount: () => {
      poller.stop();
      current?.view?.destroy?.();
      current = null;
    },
  };
}

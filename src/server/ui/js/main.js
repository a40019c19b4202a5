// The runbus web UI: a hash-routed single page over the query API.
//
//   #/                                projects
//   #/p/<project>                     runs table
//   #/p/<project>/r/<run>/<tab>       a run (overview, charts, system, logs, files, media)
//   #/p/<project>/compare?runs=a,b    runs overlaid
//
// Auth is the HttpOnly `runbus_key` cookie; when the API answers 401 the login form shows.

import { API, ApiError, get, login, setUnauthorizedHandler } from './api.js';
import { h, notice } from './dom.js';
import { mountCompare } from './compare.js';
import { mountProjects } from './projects.js';
import { mountRun } from './run.js';
import { mountRuns } from './runs.js';

const app = document.getElementById('app');
const crumbsEl = document.getElementById('crumbs');
const whoEl = document.getElementById('who');

/** Parse the location hash into a route: {page, project?, runId?, tab?, query}. */
export function parseRoute(hash) {
  const raw = hash.replace(/^#/, '') || '/';
  const [path, qs = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map((s) => {
    try { return decodeURIComponent(s); } catch (_) { return s; }
  });
  const query = new URLSearchParams(qs);
  if (parts[0] !== 'p' || parts.length < 2) return { page: 'projects', query };
  const project = parts[1];
  if (parts[2] === 'compare') return { page: 'compare', project, query };
  if (parts[2] === 'r' && parts[3]) return { page: 'run', project, runId: parts[3], tab: parts[4] || 'overview', query };
  return { page: 'runs', project, query };
}

const PAGES = { projects: mountProjects, runs: mountRuns, run: mountRun, compare: mountCompare };

const page = {
  /** Breadcrumbs after the brand: [{text, href?}]. */
  crumbs(items) {
    crumbsEl.replaceChildren(...items.flatMap((c) => [h('span', { class: 'sep' }, '/'),
      c.href ? h('a', { href: c.href }, c.text) : h('span', null, c.text)]));
  },
};

let current = null; // {key, route, view}
let generation = 0;

function routeKey(r) {
  return r.page === 'run' ? `run\u0000${r.project}\u0000${r.runId}` : `${r.page}\u0000${r.project ?? ''}\u0000${r.query}`;
}

function teardown() {
  const view = current?.view;
  if (typeof view === 'function') view();
  else view?.unmount?.();
  current = null;
}

async function route() {
  const r = parseRoute(location.hash);
  const key = routeKey(r);
  if (current && current.key === key && current.view?.update) {
    current.view.update(r);
    return;
  }
  teardown();
  const mine = ++generation;
  document.title = 'runbus';
  app.replaceChildren();
  const root = h('div', { class: `page page-${r.page}` });
  app.append(root);
  const entry = { key, route: r, view: null };
  current = entry;
  try {
    entry.view = await PAGES[r.page](root, r, page);
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof ApiError && e.status === 401) return; // the login form is up
    root.append(notice(e instanceof ApiError && e.status === 404
      ? `Not found: ${e.message}` : `Could not load this page: ${e.message}`, 'notice error'));
    console.error(e);
  }
  if (mine !== generation) {
    const v = entry.view;
    if (typeof v === 'function') v(); else v?.unmount?.();
  }
}

function showLogin(message) {
  teardown();
  generation++;
  crumbsEl.replaceChildren();
  whoEl.textContent = '';
  const input = h('input', { type: 'password', 'data-testid': 'login-key', name: 'token', autocomplete: 'current-password', placeholder: 'API key', required: true, size: 48 });
  const error = h('div', { class: 'filter-error', 'data-testid': 'login-error', role: 'alert', hidden: true });
  const form = h('form', { 'data-testid': 'login-form', class: 'login card', method: 'post', action: '/login' },
    h('h1', null, 'Log in to runbus'),
    h('p', null, 'Open the login link that ', h('code', null, 'runbus server'),
      ' printed when it first started (', h('code', null, 'http://…/login?token=…'), '), or paste an API key here.'),
    message ? h('p', { class: 'muted' }, message) : null,
    h('div', { class: 'row' }, input, h('button', { type: 'submit', 'data-testid': 'login-submit' }, 'Log in')),
    error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      await login(input.value.trim());
      start();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  app.replaceChildren(form);
  input.focus();
}

let loginShown = false;
setUnauthorizedHandler((message) => {
  if (loginShown) return;
  loginShown = true;
  showLogin(message);
});

async function start() {
  loginShown = false;
  try {
    const who = await get(`${API}/whoami`);
    whoEl.textContent = who.admin ? 'admin key' : `key ${who.key_id.slice(0, 8)}`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // login form shown
    app.replaceChildren(notice(`Cannot reach the runbus API: ${e.message}`, 'notice error'));
    return;
  }
  if (!window.uPlot) {
    app.replaceChildren(notice('The chart library did not load: rebuild the UI assets (make ui) and reload.', 'notice error'));
    return;
  }
  current = null;
  route();
}

window.addEventListener('hashchange', () => { if (!loginShown) route(); });
start();

// Talking to the runbus API: JSON with non-finite numbers tagged, errors as ApiError.

const NF = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

/** JSON.parse that turns {"$nf": "NaN"} tags back into numbers. */
export function parseJson(text) {
  if (!text.includes('"$nf"')) return JSON.parse(text);
  return JSON.parse(text, (_k, v) => {
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && typeof v.$nf === 'string') {
      const keys = Object.keys(v);
      if (keys.length === 1 && v.$nf in NF) return NF[v.$nf];
    }
    return v;
  });
}

/** An API failure: status, code and the server's message (which says what to do). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = null;
/** Called (once per failure) when the API answers 401: the page shows the login form. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** GET a JSON endpoint; `params` values that are null/undefined/'' are left out. */
export async function get(path, params, { signal } = {}) {
  const url = withParams(path, params);
  let resp;
  try {
    resp = await fetch(url, { credentials: 'same-origin', signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `cannot reach the server (${e.message}); is it running?`);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let code = 'http_' + resp.status;
    let message = `${resp.status} ${resp.statusText} for ${path}`;
    try {
      const body = parseJson(text);
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) { /* not JSON: keep the status line */ }
    if (resp.status === 401 && onUnauthorized) onUnauthorized(message);
    throw new ApiError(resp.status, code, message);
  }
  return parseJson(text);
}

/** Log in with a key: POST /login sets the HttpOnly cookie. */
export async function login(key) {
  const body = new URLSearchParams({ token: key });
  const resp = await fetch('/login', { method: 'POST', body, credentials: 'same-origin' });
  if (!resp.ok) {
    let message = 'the key was refused';
    try { message = parseJson(await resp.text()).error.message; } catch (_) { /* keep */ }
    throw new ApiError(resp.status, 'bad_key', message);
  }
}

export function withParams(path, params) {
  if (!params) return path;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === '') continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

const seg = encodeURIComponent;
export const API = '/api/v1';
export const projectUrl = (p) => `${API}/projects/${seg(p)}`;
export const runUrl = (p, r) => `${projectUrl(p)}/runs/${seg(r)}`;
/** URL of a stored run file; `download` asks for Content-Disposition: attachment. */
export function fileUrl(p, r, path, download = false) {
  const u = `${runUrl(p, r)}/files/${path.split('/').map(seg).join('/')}`;
  return download ? `${u}?download=1` : u;
}

/** Fetch a run file and parse it as runbus JSON (tables). */
export async function getFileJson(p, r, path) {
  return get(fileUrl(p, r, path));
}

/** Fetch a run file as text. */
export async function getFileText(p, r, path, { signal } = {}) {
  const resp = await fetch(fileUrl(p, r, path), { credentials: 'same-origin', signal });
  if (!resp.ok) throw new ApiError(resp.status, 'http_' + resp.status, `cannot read ${path}`);
  return resp.text();
}

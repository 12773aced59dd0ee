// Every call goes to /console/api/v1/... on this origin with the session cookie; the server puts
// the session's credential on it. State-changing calls carry the session's CSRF token.

let session = null;

export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

function signInAgain() {
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/console/login?reason=expired&next=${encodeURIComponent(next)}`);
}

/** Who is signed in: {role, user_id, csrf_token, expires_at}. */
export async function loadSession() {
  const response = await fetch("/console/api/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    signInAgain();
    throw new ApiError(401, "Not signed in");
  }
  if (!response.ok) throw new ApiError(response.status, `The console could not start (${response.status})`);
  session = await response.json();
  return session;
}

export function currentSession() {
  return session;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** The console URL of an API path (for downloads). */
export function apiUrl(path, params) {
  return `/console/api/v1/${path}${query(params)}`;
}

/** Call the API; JSON in and out; ApiError with the server's message on failure. */
export async function api(method, path, { params, body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "The server could not be reached. Check your connection and retry.");
  }
  if (response.status === 401) {
    signInAgain();
    throw new ApiError(401, "Your session has ended.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.message) || `The request failed (${response.status}).`;
    throw new ApiError(response.status, message, data && data.detail);
  }
  return data;
}

/** Field errors of a 422 (pydantic's detail list), keyed by the first path element. */
export function fieldErrors(error) {
  const found = {};
  if (!(error instanceof ApiError) || !Array.isArray(error.detail)) return found;
  for (const item of error.detail) {
    const loc = Array.isArray(item.loc) && item.loc.length ? String(item.loc[0]) : "body";
    if (!found[loc]) found[loc] = item.msg || "Invalid value";
  }
  return found;
}

// Calls to imagegate's own API from the console: the user's endpoints with the API key, the
// admin API with the admin token. Every error becomes an ApiError with the server's message.
import { credential, signOut, type Credential } from "./session";

// The header every shared endpoint (status, events, account, history, uploads) accepts.
export const KEY_HEADER = "Ocp-Apim-Subscription-Key";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field: string | null = null,
    readonly body: unknown = null,
  ) {
    super(message);
  }
}

// The three error shapes: queue {"error", "message", "field"}; admin and dojo {"error": {"code",
// "message"}}; OpenAI {"error": {"message", "param"}}.
export function errorOf(status: number, body: unknown): ApiError {
  if (body && typeof body === "object" && "error" in body) {
    const error = (body as { error: unknown }).error;
    const outer = body as { message?: string; field?: string };
    if (error && typeof error === "object") {
      const inner = error as { message?: string; param?: string };
      return new ApiError(status, inner.message ?? JSON.stringify(error), inner.param ?? null, body);
    }
    const message = outer.message && outer.message !== error ? outer.message : String(error);
    return new ApiError(status, message, outer.field ?? null, body);
  }
  return new ApiError(status, typeof body === "string" && body ? body : `HTTP ${status}`, null, body);
}

export interface CallOptions {
  method?: string;
  body?: unknown;
  form?: FormData;
}

async function call<T>(kind: Credential, path: string, auth: (secret: string) => Record<string, string>, options: CallOptions): Promise<T> {
  const secret = credential(kind);
  if (!secret) throw new ApiError(401, kind === "admin" ? "Sign in with the admin token" : "Sign in with an API key");
  const headers = auth(secret);
  let body: BodyInit | undefined;
  if (options.form) body = options.form;
  else if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(path, { method: options.method ?? "GET", headers, body });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's error page): keep the text as the message.
  }
  if (!response.ok) {
    const error = errorOf(response.status, parsed);
    // A refused credential is no use to keep: the sign-in form comes back with the reason.
    if (response.status === 401) {
      lastRefusal[kind] = error.message;
      signOut(kind);
    }
    throw error;
  }
  return parsed as T;
}

export const lastRefusal: Record<Credential, string | null> = { key: null, admin: null };

// The user's endpoints. `header` names the route's own auth header for model routes.
export function userApi<T>(path: string, options: CallOptions = {}, header = KEY_HEADER): Promise<T> {
  const auth = (key: string): Record<string, string> =>
    header.toLowerCase() === "authorization" ? { Authorization: `Bearer ${key}` } : { [header]: key };
  return call<T>("key", path, auth, options);
}

export function adminApi<T>(path: string, options: CallOptions = {}): Promise<T> {
  return call<T>("admin", `/admin/v1${path}`, (token) => ({ Authorization: `Bearer ${token}` }), options);
}

// The user's event stream of a request: fetch, since EventSource cannot send the key header.
export function openEvents(requestId: string, signal: AbortSignal): Promise<Response> {
  const key = credential("key") ?? "";
  return fetch(`/v2/requests/${encodeURIComponent(requestId)}/events`, {
    headers: { [KEY_HEADER]: key, Accept: "text/event-stream" },
    signal,
  });
}

export function query(params: Record<string, string | number | boolean | null | undefined | string[]>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(name, String(item));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// One playground run, from submit to result: it follows the request's event stream (polling the
// status when the stream is not there), and keeps every run of this tab in a small store the
// gallery renders.
import { useEffect, useState } from "preact/hooks";

import { ApiError, openEvents, userApi } from "./api";
import type { Values } from "./schema";
import type { RouteInfo } from "./snippets";
import { readEvents } from "./sse";
import { ENDED, type CatalogEntry, type ItemsPage, type JobStatus, type ProgressEvent, type QueueStatus, type RequestSummary } from "./types";

export interface Run {
  id: number;
  modelId: string; // the catalog id
  title: string;
  route: RouteInfo;
  body: Values; // exactly what was sent
  requestId: string | null;
  // REFUSED: the submit itself was answered with an error (400, 402, …): no request exists.
  status: JobStatus | "SUBMITTING" | "REFUSED";
  queuePosition: number | null; // requests ahead of it, while queued
  progress: number;
  step: number | null;
  steps: number | null;
  loss: number | null;
  images: string[];
  seed: number | null;
  nsfw: boolean[];
  error: string | null;
  errorStatus: number | null;
  errorField: string | null;
  startedAt: number;
  endedAt: number | null;
}

// Routes the playground submits through, best first: the queue protocol answers the request id
// at once; the synchronous styles answer only at the end. Routes with a body of their own (the
// dojo protocol's `image`) and the OpenAI-compatible route speak another schema than the form's.
const PREFERRED = ["queue", "sync-output", "sync-url", "batch"];

export function preferredRoute(entry: CatalogEntry): RouteInfo {
  for (const protocol of PREFERRED) {
    const route = entry.routes.find((r) => r.protocol === protocol);
    if (route) return route;
  }
  return entry.routes[0];
}

// -- the store ----------------------------------------------------------------------------------

const STORAGE = "imagegate.playground.runs";
const KEEP = 40;
const listeners = new Set<() => void>();
let runs: Run[] = restore();
let nextId = runs.reduce((max, r) => Math.max(max, r.id), 0) + 1;

function restore(): Run[] {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE) ?? "[]") as Run[];
    // A reload before the server answered leaves nothing to follow (History has the request if
    // it was made); one with a request id is followed again below.
    return saved.filter((r) => r.status !== "SUBMITTING");
  } catch {
    return [];
  }
}

function save(): void {
  try {
    sessionStorage.setItem(STORAGE, JSON.stringify(runs.slice(0, KEEP)));
  } catch {
    // Storage full: the gallery still works for this page's life.
  }
}

function change(id: number, patch: Partial<Run>): void {
  runs = runs.map((r) => (r.id === id ? { ...r, ...patch } : r));
  save();
  listeners.forEach((notify) => notify());
}

export function isLive(run: Run): boolean {
  return run.status === "SUBMITTING" || run.status === "QUEUED" || run.status === "PROCESSING";
}

export function useRuns(): Run[] {
  const [, setVersion] = useState(0);
  useEffect(() => {
    const notify = () => setVersion((v) => v + 1);
    listeners.add(notify);
    return () => void listeners.delete(notify);
  }, []);
  return runs;
}

export function clearRuns(): void {
  runs = runs.filter(isLive);
  save();
  listeners.forEach((notify) => notify());
}

// -- following a request --------------------------------------------------------------------------

const POLL_MS = 500;
const POSITION_MS = 2000;

function statusPath(requestId: string): string {
  return `/v2/requests/status/${encodeURIComponent(requestId)}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function fromStatus(status: QueueStatus): Partial<Run> {
  const ended = ENDED.includes(status.status);
  return {
    requestId: status.request_id,
    status: status.status,
    queuePosition: status.queue_position ?? null,
    progress: status.status === "COMPLETED" ? 1 : status.progress,
    images: status.output?.media_url ?? [],
    seed: status.output?.seed ?? null,
    nsfw: status.output?.has_nsfw_concepts ?? [],
    error: status.error,
    errorStatus: null,
    errorField: null,
    ...(ended ? { endedAt: Date.now() } : {}),
  };
}

async function pollStatus(id: number, requestId: string): Promise<void> {
  for (;;) {
    const status = await userApi<QueueStatus>(statusPath(requestId));
    change(id, fromStatus(status));
    if (ENDED.includes(status.status)) return;
    await sleep(POLL_MS);
  }
}

// The event stream until `done`; the status poll where the stream is missing or breaks off.
// Events come on changes only, and a queued request's position changes without one: while it
// waits, its status is read now and then for that.
async function follow(id: number, requestId: string, signal = new AbortController().signal): Promise<void> {
  let ended = false;
  const readPosition = async () => {
    if (runs.find((r) => r.id === id)?.status !== "QUEUED") return;
    const status = await userApi<QueueStatus>(statusPath(requestId)).catch(() => null);
    if (status?.status === "QUEUED") change(id, { queuePosition: status.queue_position ?? null });
  };
  const position = setInterval(readPosition, POSITION_MS);
  try {
    const response = await openEvents(requestId, signal);
    if (response.ok) {
      await readEvents(response, (event) => {
        const data = JSON.parse(event.data);
        if (event.event === "progress") {
          const progress = data as ProgressEvent;
          change(id, { status: "PROCESSING", progress: progress.progress, step: progress.step, steps: progress.steps, loss: progress.loss ?? null });
        } else if (event.event === "status" || event.event === "done") {
          change(id, fromStatus(data as QueueStatus));
          ended = ended || event.event === "done";
          if (event.event === "status") void readPosition();
        }
      });
    }
  } catch {
    // The stream broke (a proxy, a restart) or was let go: the poll below carries on, if wanted.
  } finally {
    clearInterval(position);
  }
  if (!ended && !signal.aborted) await pollStatus(id, requestId);
}

async function ownRequestIds(): Promise<Set<string>> {
  const page = await userApi<ItemsPage<RequestSummary>>("/v2/requests?limit=20");
  return new Set(page.items.map((item) => item.request_id));
}

// A synchronous route answers only at the end; the request it made shows up in the key's
// history at once, so its progress can be followed from there.
async function discover(modelId: string, known: Set<string>, signal: AbortSignal, tries = Infinity): Promise<string | null> {
  for (let i = 0; i < tries && !signal.aborted; i++) {
    const page = await userApi<ItemsPage<RequestSummary>>("/v2/requests?limit=20");
    const fresh = page.items.find((item) => item.model_id === modelId && !known.has(item.request_id));
    if (fresh) return fresh.request_id;
    await sleep(POLL_MS / 2);
  }
  return null;
}

function failed(id: number, error: unknown): void {
  const api = error instanceof ApiError ? error : new ApiError(0, String(error));
  const made = runs.find((r) => r.id === id)?.requestId;
  change(id, {
    // Without a request id the submit itself was refused; with one, following it broke.
    ...(made ? {} : { status: "REFUSED" as const }),
    error: api.message,
    errorStatus: api.status || null,
    errorField: api.field,
    endedAt: Date.now(),
  });
}

export function startRun(entry: CatalogEntry, body: Values): Run {
  const route = preferredRoute(entry);
  const run: Run = {
    id: nextId++,
    modelId: entry.id,
    title: entry.title,
    route,
    body,
    requestId: null,
    status: "SUBMITTING",
    queuePosition: null,
    progress: 0,
    step: null,
    steps: null,
    loss: null,
    images: [],
    seed: null,
    nsfw: [],
    error: null,
    errorStatus: null,
    errorField: null,
    startedAt: Date.now(),
    endedAt: null,
  };
  runs = [run, ...runs];
  change(run.id, {});
  void execute(run, entry).catch((error) => failed(run.id, error));
  return run;
}

async function execute(run: Run, entry: CatalogEntry): Promise<void> {
  const { id, route, body } = run;
  const submit = <T,>() => userApi<T>(route.path, { method: route.method, body }, route.auth_header);
  if (route.protocol === "queue") {
    const submitted = await submit<{ request_id: string; status: JobStatus }>();
    change(id, { requestId: submitted.request_id, status: submitted.status });
    await follow(id, submitted.request_id);
    return;
  }
  // Synchronous styles: follow the request found in the history while the answer is awaited.
  const watching = new AbortController();
  let requestId: string | null = null;
  const known = await ownRequestIds().catch(() => null);
  const watcher = known
    ? discover(entry.model_id, known, watching.signal)
        .then((found) => {
          if (!found || watching.signal.aborted) return;
          requestId = found;
          change(id, { requestId: found, status: "QUEUED" });
          return follow(id, found, watching.signal);
        })
        .catch(() => undefined)
    : Promise.resolve();
  try {
    let url: string | undefined;
    try {
      const answer = await submit<{ output?: string; url?: string }>();
      url = answer.output ?? answer.url;
    } catch (error) {
      // A job that ran and failed answers with its request id: its status says why.
      const failedId = error instanceof ApiError ? (error.body as { request_id?: string } | null)?.request_id : undefined;
      if (!failedId) throw error;
      requestId = failedId;
    }
    if (!requestId && known) requestId = await discover(entry.model_id, known, new AbortController().signal, 10);
    watching.abort();
    await watcher;
    if (requestId) await pollStatus(id, requestId);
    else change(id, { status: "COMPLETED", progress: 1, images: url ? [url] : [], endedAt: Date.now() });
  } finally {
    watching.abort();
  }
}

export async function cancelRun(run: Run): Promise<void> {
  if (!run.requestId) return;
  const status = await userApi<QueueStatus>(`/v2/requests/${encodeURIComponent(run.requestId)}/cancel`, { method: "PUT" });
  change(run.id, fromStatus(status));
}

// Runs a reload interrupted carry on where they were.
for (const run of runs) {
  if (isLive(run) && run.requestId) void follow(run.id, run.requestId).catch((error) => failed(run.id, error));
}

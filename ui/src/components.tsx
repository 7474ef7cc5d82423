// Pieces every page uses: loading data, pages of lists, errors, badges, progress, copying.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { ApiError } from "./api";
import { percent } from "./format";
import { onLinkClick, BASE } from "./router";

export interface Loaded<T> {
  data: T | null;
  error: ApiError | null;
  loading: boolean;
  reload: () => void;
}

function asApiError(error: unknown): ApiError {
  return error instanceof ApiError ? error : new ApiError(0, error instanceof Error ? error.message : String(error));
}

// Loads `load()` now, again when `deps` change, and every `everyMs` when given (a live view).
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], everyMs?: number): Loaded<T> {
  const [state, setState] = useState<{ data: T | null; error: ApiError | null; loading: boolean }>({
    data: null,
    error: null,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState((s) => ({ data: s.data, error: asApiError(error), loading: false })),
    );
    return () => void (live = false);
  }, [...deps, tick]);
  useEffect(() => {
    if (!everyMs) return;
    const timer = setInterval(() => setTick((t) => t + 1), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}

export interface Paged<T> {
  items: T[];
  error: ApiError | null;
  loading: boolean;
  more: boolean;
  loadMore: () => void;
  reload: () => void;
}

// A newest-first list a page at a time: `fetchPage(cursor)` answers the items and the next cursor.
export function usePaged<T>(fetchPage: (cursor: string | null) => Promise<{ items: T[]; next: string | null }>, deps: unknown[]): Paged<T> {
  const [items, setItems] = useState<T[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(true);
  const generation = useRef(0);

  const load = useCallback((cursor: string | null) => {
    const mine = ++generation.current;
    setLoading(true);
    fetchPage(cursor).then(
      (page) => {
        if (mine !== generation.current) return;
        setItems((old) => (cursor ? [...old, ...page.items] : page.items));
        setNext(page.next);
        setError(null);
        setLoading(false);
      },
      (err) => {
        if (mine !== generation.current) return;
        setError(asApiError(err));
        setLoading(false);
      },
    );
  }, deps);

  useEffect(() => load(null), [load]);
  return { items, error, loading, more: next !== null, loadMore: () => next && load(next), reload: () => load(null) };
}

export interface Action {
  error: ApiError | null;
  busy: boolean;
  // Runs `work`, keeping its error for the page to show: its result, or null when it failed.
  run: <T>(work: () => Promise<T>) => Promise<T | null>;
}

// What a button does to the server, with the error (or nothing) the page shows beside it.
export function useAction(): Action {
  const [error, setError] = useState<ApiError | null>(null);
  const [busy, setBusy] = useState(false);
  const run = useCallback(async <T,>(work: () => Promise<T>): Promise<T | null> => {
    setError(null);
    setBusy(true);
    try {
      return await work();
    } catch (err) {
      setError(asApiError(err));
      return null;
    } finally {
      setBusy(false);
    }
  }, []);
  return { error, busy, run };
}

// A paged list's states: its error, the list itself, loading, empty, and the next page.
export function PagedList({ paged, empty, children }: { paged: Paged<unknown>; empty: string; children: ComponentChildren }) {
  return (
    <>
      <ErrorBox error={paged.error} />
      {paged.items.length ? children : paged.loading ? <p class="muted">Loading…</p> : <Empty>{empty}</Empty>}
      <MoreButton paged={paged} />
    </>
  );
}

export function ErrorBox({ error, title }: { error: ApiError | Error | string | null; title?: string }) {
  if (!error) return null;
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : "";
  const message = typeof error === "string" ? error : error.message;
  return (
    <div class="error" role="alert">
      {title ? <strong>{title}: </strong> : null}
      {message}
      {status}
    </div>
  );
}

export function MoreButton({ paged }: { paged: Paged<unknown> }) {
  if (!paged.more) return null;
  return (
    <button class="secondary more" disabled={paged.loading} onClick={paged.loadMore}>
      {paged.loading ? "Loading…" : "Load more"}
    </button>
  );
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge status-${status.toLowerCase()}`}>{status}</span>;
}

export function ProgressBar({ value, label }: { value: number; label?: string }) {
  const clamped = Math.max(0, Math.min(1, value));
  return (
    <div class="progress" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(clamped * 100)}>
      <div class="progress-fill" style={{ width: percent(clamped) }} />
      <span class="progress-label">{label ?? percent(clamped)}</span>
    </div>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Plain http on another host has no clipboard API: select the text the old way.
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    setCopied(true);
    setTimeout(() => setCopied(false), 1500);
  };
  return (
    <button type="button" class="secondary small" onClick={copy}>
      {copied ? "Copied" : label}
    </button>
  );
}

export function Link({ to, children, class: className }: { to: string; children: ComponentChildren; class?: string }) {
  return (
    <a href={BASE + to} class={className} onClick={(e) => onLinkClick(e as unknown as MouseEvent, to)}>
      {children}
    </a>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <p class="empty">{children}</p>;
}

export function Card({ title, children, actions }: { title?: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="card">
      {title || actions ? (
        <header class="card-head">
          {title ? <h2>{title}</h2> : <span />}
          {actions}
        </header>
      ) : null}
      {children}
    </section>
  );
}

export interface Bar {
  label: string;
  value: number;
  hint?: string;
}

// A bar chart in plain HTML and CSS: no chart library, nothing fetched, text never stretched.
export function BarChart({ bars, format }: { bars: Bar[]; format: (v: number) => string }) {
  if (!bars.some((b) => b.value > 0)) return <Empty>Nothing in this period.</Empty>;
  const max = Math.max(...bars.map((b) => b.value));
  // About eight labels, whatever the number of bars, the last one always.
  const every = Math.ceil(bars.length / 8);
  const labelled = (i: number) => i % every === (bars.length - 1) % every;
  return (
    <div class="chart" role="img">
      <div class="chart-max">{format(max)}</div>
      <div class="chart-bars">
        {bars.map((bar) => (
          <div class="chart-col" key={bar.label} title={`${bar.label}: ${format(bar.value)}${bar.hint ? ` · ${bar.hint}` : ""}`}>
            <div class={bar.value > 0 ? "chart-bar" : "chart-bar empty"} style={{ height: `${(bar.value / max) * 100}%` }} />
          </div>
        ))}
      </div>
      <div class="chart-ticks">
        {bars.map((bar, i) => (
          <span key={bar.label}>{labelled(i) ? bar.label.slice(-5) : ""}</span>
        ))}
      </div>
    </div>
  );
}

// A <select> of [value, label] pairs.
export function Choice({ name, value, options, onChange }: { name: string; value: string; options: [string, string][]; onChange: (value: string) => void }) {
  return (
    <select name={name} value={value} onChange={(e) => onChange((e.target as HTMLSelectElement).value)}>
      {options.map(([v, label]) => (
        <option value={v}>{label}</option>
      ))}
    </select>
  );
}

export function Json({ value }: { value: unknown }) {
  return <pre class="json">{JSON.stringify(value, null, 2)}</pre>;
}

// The playground: pick a model, fill the form its schema generates, run it, follow its progress,
// keep the results in a gallery, and copy the same request as code.
import { useEffect, useMemo, useState } from "preact/hooks";

import { userApi } from "../api";
import { Card, CopyButton, Empty, ErrorBox, ProgressBar, StatusBadge, useLoad } from "../components";
import { navigate } from "../router";
import { buildBody, FieldError, fieldsOf, initialValues, valuesFromBody, type Values } from "../schema";
import { cancelRun, clearRuns, isLive, preferredRoute, startRun, useRuns, type Run } from "../run";
import { curlSnippet, javascriptSnippet, pythonSnippet, type SnippetRequest } from "../snippets";
import type { CatalogEntry } from "../types";
import { SchemaForm } from "./Form";

const LANGUAGES = [
  { id: "curl", label: "curl", render: curlSnippet },
  { id: "python", label: "Python", render: pythonSnippet },
  { id: "javascript", label: "JavaScript", render: javascriptSnippet },
] as const;

function Snippets({ request }: { request: SnippetRequest | FieldError }) {
  const [language, setLanguage] = useState<(typeof LANGUAGES)[number]["id"]>("curl");
  const chosen = LANGUAGES.find((l) => l.id === language)!;
  const code = request instanceof FieldError ? null : chosen.render(request);
  return (
    <Card
      title="As code"
      actions={
        <div class="tabs" role="tablist">
          {LANGUAGES.map((l) => (
            <button type="button" role="tab" aria-selected={l.id === language} class={l.id === language ? "tab active" : "tab"} onClick={() => setLanguage(l.id)}>
              {l.label}
            </button>
          ))}
        </div>
      }
    >
      {code === null ? (
        <ErrorBox error={`${(request as FieldError).field} ${(request as FieldError).rule}`} />
      ) : (
        <div class="snippet">
          <pre class="code" data-language={language}>
            {code}
          </pre>
          <CopyButton text={code} />
        </div>
      )}
      <p class="muted small">Set IMAGEGATE_KEY to your API key first; the snippets never contain it.</p>
    </Card>
  );
}

function seconds(run: Run): string {
  const end = run.endedAt ?? Date.now();
  return `${((end - run.startedAt) / 1000).toFixed(1)} s`;
}

function progressLabel(run: Run): string {
  if (run.status === "SUBMITTING") return "submitting…";
  // queue_position counts the requests a worker takes before this one.
  if (run.status === "QUEUED") return run.queuePosition !== null ? `queued · ${run.queuePosition} ahead` : "queued";
  if (run.step !== null && run.steps) return `step ${run.step} / ${run.steps}${run.loss !== null ? ` · loss ${run.loss.toFixed(4)}` : ""}`;
  return `${Math.round(run.progress * 100)}%`;
}

function RunCard({ run, onRerun, onLoad }: { run: Run; onRerun: (run: Run) => void; onLoad: (run: Run) => void }) {
  const [, tick] = useState(0);
  const live = isLive(run);
  useEffect(() => {
    if (!live) return;
    const timer = setInterval(() => tick((t) => t + 1), 250);
    return () => clearInterval(timer);
  }, [live]);
  return (
    <article class="run" data-run={run.id} data-status={run.status} data-request-id={run.requestId ?? ""}>
      <header class="run-head">
        <StatusBadge status={run.status} />
        <strong>{run.title}</strong>
        <span class="muted small">{seconds(run)}</span>
        {run.seed !== null ? <span class="seed">seed {run.seed}</span> : null}
      </header>
      {live ? <ProgressBar value={run.progress} label={progressLabel(run)} /> : null}
      {run.error ? (
        <ErrorBox error={`${run.errorStatus ? `${run.errorStatus} · ` : ""}${run.errorField ? `${run.errorField}: ` : ""}${run.error}`} />
      ) : null}
      {run.images.length ? (
        <div class="images">
          {run.images.map((url, i) => (
            <a href={url} target="_blank" rel="noreferrer noopener">
              <img src={url} alt={`result ${i + 1}`} class={run.nsfw[i] ? "flagged" : ""} referrerpolicy="no-referrer" />
            </a>
          ))}
        </div>
      ) : null}
      <details>
        <summary>Parameters{run.requestId ? ` · ${run.requestId}` : ""}</summary>
        <pre class="json">{JSON.stringify(run.body, null, 2)}</pre>
      </details>
      <footer class="row">
        {live && run.requestId ? (
          <button type="button" class="secondary small" onClick={() => cancelRun(run)}>
            Cancel
          </button>
        ) : null}
        <button type="button" class="small" disabled={run.seed === null} onClick={() => onRerun(run)} title="The same parameters and seed: the same pixels">
          Re-run with seed {run.seed ?? "…"}
        </button>
        <button type="button" class="secondary small" onClick={() => onLoad(run)}>
          Edit parameters
        </button>
      </footer>
    </article>
  );
}

export function Playground({ modelId }: { modelId: string | null }) {
  const catalog = useLoad(() => userApi<{ models: CatalogEntry[] }>("/v2/models"), []);
  const models = catalog.data?.models ?? [];
  const entry = models.find((m) => m.id === modelId) ?? models[0] ?? null;
  const fields = useMemo(() => (entry ? fieldsOf(entry.request_schema, entry.inputs) : []), [entry]);
  const [values, setValues] = useState<Values>({});
  const [invalid, setInvalid] = useState<FieldError | null>(null);
  const runs = useRuns();

  // A new model starts from its defaults, or from the parameters a gallery card asked for.
  const [pending, setPending] = useState<Values | null>(null);
  useEffect(() => {
    setValues(pending ? valuesFromBody(fields, pending) : initialValues(fields));
    setPending(null);
    setInvalid(null);
  }, [fields]);

  const request = useMemo((): SnippetRequest | FieldError => {
    if (!entry) return new FieldError("model", "is required");
    try {
      return { baseUrl: window.location.origin, modelId: entry.id, route: preferredRoute(entry), body: buildBody(fields, values) };
    } catch (err) {
      if (err instanceof FieldError) return err;
      throw err;
    }
  }, [entry, fields, values]);

  const run = (event: Event) => {
    event.preventDefault();
    if (!entry) return;
    if (request instanceof FieldError) {
      setInvalid(request);
      return;
    }
    setInvalid(null);
    startRun(entry, request.body);
  };

  const rerun = (previous: Run) => {
    const target = models.find((m) => m.id === previous.modelId);
    if (target && previous.seed !== null) startRun(target, { ...previous.body, seed: previous.seed });
  };

  const load = (previous: Run) => {
    const body = { ...previous.body, ...(previous.seed !== null ? { seed: previous.seed } : {}) };
    if (previous.modelId === entry?.id) setValues(valuesFromBody(fields, body));
    else {
      setPending(body);
      navigate(`/playground/${previous.modelId}`);
    }
  };

  // The server's own verdict on the last run names a field too: mark it in the form.
  const lastRefused = runs.find((r) => r.modelId === entry?.id);
  const invalidField = invalid?.field ?? (lastRefused?.status === "REFUSED" ? lastRefused.errorField : null);

  if (catalog.error) return <ErrorBox error={catalog.error} title="The model catalog did not load" />;
  if (!entry) return catalog.loading ? <p class="muted">Loading models…</p> : <Empty>No model is enabled on this server.</Empty>;

  return (
    <div class="playground">
      <form class="card form-column" onSubmit={run}>
        <label class="model-picker">
          Model
          <select name="model" value={entry.id} onChange={(e) => navigate(`/playground/${(e.target as HTMLSelectElement).value}`)}>
            {models.map((m) => (
              <option value={m.id}>
                {m.title} — {m.id}
              </option>
            ))}
          </select>
        </label>
        <p class="muted small model-meta">
          {entry.task} · {entry.family} · {entry.price.description}
          {entry.price.usd_for_defaults ? ` · $${Number(entry.price.usd_for_defaults)} with the defaults` : ""}
        </p>
        <SchemaForm fields={fields} values={values} onChange={setValues} invalidField={invalidField} />
        {invalid ? <ErrorBox error={`${invalid.field} ${invalid.rule}`} /> : null}
        <div class="row sticky-actions">
          <button type="submit" class="primary" name="run">
            Run
          </button>
          <button type="button" class="secondary" onClick={() => setValues(initialValues(fields))}>
            Reset to defaults
          </button>
        </div>
      </form>
      <div class="results-column">
        <Card title="Results" actions={runs.length ? <button type="button" class="secondary small" onClick={clearRuns}>Clear</button> : null}>
          {runs.length ? (
            <div class="gallery">
              {runs.map((r) => (
                <RunCard key={r.id} run={r} onRerun={rerun} onLoad={load} />
              ))}
            </div>
          ) : (
            <Empty>Results of this tab's runs appear here, newest first.</Empty>
          )}
        </Card>
        <Snippets request={request} />
      </div>
    </div>
  );
}

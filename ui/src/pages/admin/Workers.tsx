// The worker registry: liveness, device, loaded models, current job.
import { adminApi } from "../../api";
import { Card, Empty, ErrorBox, useLoad } from "../../components";
import { ago, when } from "../../format";
import type { Page, WorkerView } from "../../types";

export function Workers() {
  const workers = useLoad(() => adminApi<Page<WorkerView>>("/workers?limit=500"), [], 3000);
  const rows = workers.data?.data ?? [];
  return (
    <Card>
      <ErrorBox error={workers.error} />
      {rows.length ? (
        <table class="table">
          <thead>
            <tr>
              <th>Worker</th>
              <th>Device</th>
              <th>State</th>
              <th class="num">Heartbeat</th>
              <th>Serves</th>
              <th>Loaded</th>
              <th>Current job</th>
              <th>Started</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((w) => (
              <tr key={w.id} data-worker-id={w.id} class={w.live ? "" : "dim"}>
                <td class="mono small">
                  {w.id}
                  <div class="muted">
                    pid {w.pid} · v{w.version}
                  </div>
                </td>
                <td>{w.device}</td>
                <td>
                  <span class={`badge worker-${w.live ? w.state : "gone"}`}>{w.live ? w.state : "not live"}</span>
                  {w.last_error ? <div class="error-text small">{w.last_error}</div> : null}
                </td>
                <td class="num">{ago(w.heartbeat_age_seconds)}</td>
                <td class="small">{w.models ? w.models.join(", ") : "every model"}</td>
                <td class="small">{w.loaded.join(", ") || "—"}</td>
                <td class="mono small">{w.current_job ?? "—"}</td>
                <td class="small">{when(w.started_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : workers.loading ? (
        <p class="muted">Loading…</p>
      ) : (
        <Empty>No worker has registered.</Empty>
      )}
    </Card>
  );
}

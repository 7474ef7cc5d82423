// The live queue: depth per model, running jobs with their progress, queued jobs; cancel any.
import { adminApi, query } from "../../api";
import { Card, Empty, ErrorBox, ProgressBar, StatusBadge, useAction, useLoad } from "../../components";
import { usd, when } from "../../format";
import type { JobDetail, JobView, Page } from "../../types";

const REFRESH_MS = 1500;
const MOST = 500;

async function liveJobs(): Promise<{ queued: JobView[]; running: JobDetail[]; more: boolean }> {
  const page = await adminApi<Page<JobView>>(`/jobs${query({ status: ["QUEUED", "PROCESSING"], limit: MOST })}`);
  const running = page.data.filter((j) => j.status === "PROCESSING");
  // The details carry the step counts the list leaves out.
  const details = await Promise.all(running.slice(0, 20).map((j) => adminApi<JobDetail>(`/jobs/${encodeURIComponent(j.id)}`).catch(() => ({ ...j, progress_detail: null }) as JobDetail)));
  return { queued: page.data.filter((j) => j.status === "QUEUED").reverse(), running: details, more: page.next_cursor !== null };
}

function depth(queued: JobView[], running: JobView[]): { model: string; queued: number; running: number }[] {
  const models = new Map<string, { model: string; queued: number; running: number }>();
  for (const [jobs, field] of [[queued, "queued"], [running, "running"]] as const) {
    for (const job of jobs) {
      const row = models.get(job.model_id) ?? { model: job.model_id, queued: 0, running: 0 };
      row[field]++;
      models.set(job.model_id, row);
    }
  }
  return [...models.values()].sort((a, b) => b.queued - a.queued || a.model.localeCompare(b.model));
}

export function Queue() {
  const jobs = useLoad(liveJobs, [], REFRESH_MS);
  const action = useAction();
  const cancel = async (job: JobView) => {
    await action.run(() => adminApi<JobDetail>(`/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }));
    jobs.reload();
  };
  const queued = jobs.data?.queued ?? [];
  const running = jobs.data?.running ?? [];
  const cancelButton = (job: JobView) =>
    job.cancel_requested ? (
      <span class="muted small">cancel requested</span>
    ) : (
      <button type="button" class="secondary small" onClick={() => cancel(job)}>
        Cancel
      </button>
    );
  return (
    <div class="stack">
      <ErrorBox error={jobs.error ?? action.error} />
      <Card title="Depth per model">
        {queued.length || running.length ? (
          <table class="table compact">
            <thead>
              <tr>
                <th>Model</th>
                <th class="num">Queued</th>
                <th class="num">Running</th>
              </tr>
            </thead>
            <tbody>
              {depth(queued, running).map((row) => (
                <tr key={row.model} data-model-id={row.model}>
                  <td>{row.model}</td>
                  <td class="num queued-count">{row.queued}</td>
                  <td class="num">{row.running}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <Empty>The queue is empty.</Empty>
        )}
        {jobs.data?.more ? <p class="muted small">Showing the newest {MOST} jobs.</p> : null}
      </Card>
      <Card title={`Running (${running.length})`}>
        {running.length ? (
          <table class="table">
            <tbody>
              {running.map((job) => (
                <tr key={job.id} data-job-id={job.id}>
                  <td class="mono small">{job.id}</td>
                  <td class="mono small">{job.worker ?? "—"}</td>
                  <td class="wide">
                    <ProgressBar
                      value={job.progress}
                      label={job.progress_detail?.steps ? `step ${job.progress_detail.step ?? 0} / ${job.progress_detail.steps}` : undefined}
                    />
                  </td>
                  <td>{cancelButton(job)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <Empty>Nothing is running.</Empty>
        )}
      </Card>
      <Card title={`Queued (${queued.length})`}>
        {queued.length ? (
          <table class="table">
            <thead>
              <tr>
                <th>Job</th>
                <th>Key</th>
                <th>Status</th>
                <th class="num">Price</th>
                <th>Queued at</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {queued.map((job) => (
                <tr key={job.id} data-job-id={job.id}>
                  <td class="mono small">{job.id}</td>
                  <td class="mono small">{job.key_id}</td>
                  <td>
                    <StatusBadge status={job.status} />
                  </td>
                  <td class="num">{usd(job.price)}</td>
                  <td class="small">{when(job.created_at)}</td>
                  <td>{cancelButton(job)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <Empty>Nothing is waiting.</Empty>
        )}
      </Card>
    </div>
  );
}

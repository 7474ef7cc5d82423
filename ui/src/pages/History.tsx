// The key's own requests, newest first: status, model, cost, thumbnails, errors; cancel while
// queued or running.
import { useEffect, useState } from "preact/hooks";

import { query, userApi } from "../api";
import { Card, Choice, ErrorBox, PagedList, ProgressBar, StatusBadge, useAction, usePaged } from "../components";
import { usd, when } from "../format";
import type { ItemsPage, QueueStatus, RequestSummary } from "../types";

const FILTERS = ["", "QUEUED,PROCESSING", "COMPLETED", "FAILED,ERROR", "CANCELED"];

export function History() {
  const [status, setStatus] = useState("");
  const action = useAction();
  const paged = usePaged(
    (cursor) =>
      userApi<ItemsPage<RequestSummary>>(`/v2/requests${query({ limit: 20, cursor, status })}`).then((page) => ({
        items: page.items,
        next: page.next_cursor,
      })),
    [status],
  );
  // While something is queued or running, the first page keeps itself current.
  const live = paged.items.some((item) => item.status === "QUEUED" || item.status === "PROCESSING");
  useEffect(() => {
    if (!live) return;
    const timer = setInterval(paged.reload, 2000);
    return () => clearInterval(timer);
  }, [live, paged.reload]);

  const cancel = async (item: RequestSummary) => {
    await action.run(() => userApi<QueueStatus>(`/v2/requests/${encodeURIComponent(item.request_id)}/cancel`, { method: "PUT" }));
    paged.reload();
  };

  return (
    <Card
      actions={
        <div class="row">
          <Choice name="status" value={status} onChange={setStatus} options={FILTERS.map((f) => [f, f ? f.replace(",", " or ").toLowerCase() : "all statuses"])} />
          <button type="button" class="secondary small" onClick={paged.reload}>
            Refresh
          </button>
        </div>
      }
    >
      <ErrorBox error={action.error} />
      <PagedList paged={paged} empty="No requests yet.">
        <table class="table history">
          <thead>
            <tr>
              <th />
              <th>Request</th>
              <th>Model</th>
              <th>Status</th>
              <th class="num">Cost</th>
              <th>Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {paged.items.map((item) => (
              <tr data-request-id={item.request_id} key={item.request_id}>
                <td class="thumb">
                  {item.thumbnail ? (
                    <a href={item.thumbnail} target="_blank" rel="noreferrer noopener">
                      <img src={item.thumbnail} alt="" referrerpolicy="no-referrer" />
                    </a>
                  ) : null}
                </td>
                <td class="mono small">
                  {item.request_id}
                  {item.error ? <div class="error-text">{item.error}</div> : null}
                </td>
                <td class="nowrap">{item.model_id}</td>
                <td>
                  <StatusBadge status={item.status} />
                  {item.status === "PROCESSING" ? <ProgressBar value={item.progress} /> : null}
                </td>
                <td class="num">{usd(item.cost)}</td>
                <td class="small">{when(item.created_at)}</td>
                <td>
                  {item.status === "QUEUED" || item.status === "PROCESSING" ? (
                    <button type="button" class="secondary small" onClick={() => cancel(item)}>
                      Cancel
                    </button>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </PagedList>
    </Card>
  );
}

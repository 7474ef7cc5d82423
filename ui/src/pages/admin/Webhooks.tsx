// Webhook deliveries of every request; send a request's final webhook again.
import { useState } from "preact/hooks";

import { adminApi } from "../../api";
import { Card, Choice, ErrorBox, PagedList, useAction, usePaged } from "../../components";
import { when } from "../../format";
import type { DeliveryView } from "../../types";
import { adminPage } from "./paging";

const STATES = ["", "pending", "delivered", "failed", "dropped"];

export function Webhooks() {
  const [state, setState] = useState("");
  const [requestId, setRequestId] = useState("");
  const deliveries = usePaged(adminPage<DeliveryView>("/webhooks", { limit: 50, state: state || null, request_id: requestId.trim() || null }), [state, requestId]);
  const action = useAction();
  const [sent, setSent] = useState<string | null>(null);
  const redeliver = async (item: DeliveryView) => {
    const event = await action.run(() => adminApi<DeliveryView>(`/webhooks/${encodeURIComponent(item.request_id)}/redeliver`, { method: "POST" }));
    if (event) setSent(`${event.request_id}: ${event.event_type} queued again (${event.event_id})`);
    deliveries.reload();
  };
  return (
    <Card
      actions={
        <div class="row">
          <Choice name="state" value={state} onChange={setState} options={STATES.map((s) => [s, s || "every state"])} />
          <input name="request-id" placeholder="request id" value={requestId} onChange={(e) => setRequestId((e.target as HTMLInputElement).value)} />
        </div>
      }
    >
      <ErrorBox error={action.error} />
      {sent ? <p class="notice">{sent}</p> : null}
      <PagedList paged={deliveries} empty="No webhook deliveries.">
        <table class="table">
          <thead>
            <tr>
              <th>Request</th>
              <th>Event</th>
              <th>State</th>
              <th class="num">Attempts</th>
              <th>Last answer</th>
              <th>Target</th>
              <th>Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {deliveries.items.map((d) => (
              <tr key={d.event_id}>
                <td class="mono small">{d.request_id}</td>
                <td>{d.event_type}</td>
                <td>
                  <span class={`badge delivery-${d.state}`}>{d.state}</span>
                </td>
                <td class="num">{d.attempts}</td>
                <td class="small">{d.last_status_code ?? d.last_error ?? "—"}</td>
                <td class="mono small ellipsis" title={d.target_url}>
                  {d.target_url}
                </td>
                <td class="small">{when(d.created_at)}</td>
                <td>
                  <button type="button" class="secondary small" onClick={() => redeliver(d)}>
                    Redeliver
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </PagedList>
    </Card>
  );
}

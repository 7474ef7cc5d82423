// Every change made through the admin API or the command line.
import { useState } from "preact/hooks";

import { Card, PagedList, usePaged } from "../../components";
import { when } from "../../format";
import type { AuditEntry } from "../../types";
import { adminPage } from "./paging";

export function Audit() {
  const [action, setAction] = useState("");
  const [target, setTarget] = useState("");
  const entries = usePaged(adminPage<AuditEntry>("/audit", { limit: 50, action: action.trim() || null, target: target.trim() || null }), [action, target]);
  return (
    <Card
      actions={
        <div class="row">
          <input name="action" placeholder="action (key.topup)" value={action} onChange={(e) => setAction((e.target as HTMLInputElement).value)} />
          <input name="target" placeholder="key, model or job id" value={target} onChange={(e) => setTarget((e.target as HTMLInputElement).value)} />
        </div>
      }
    >
      <PagedList paged={entries} empty="No changes recorded.">
        <table class="table">
          <thead>
            <tr>
              <th>When</th>
              <th>Actor</th>
              <th>Action</th>
              <th>Target</th>
              <th>Detail</th>
            </tr>
          </thead>
          <tbody>
            {entries.items.map((e) => (
              <tr key={e.id}>
                <td class="small">{when(e.at)}</td>
                <td>{e.actor}</td>
                <td class="mono small">{e.action}</td>
                <td class="mono small">{e.target ?? "—"}</td>
                <td class="mono small">{e.detail ? JSON.stringify(e.detail) : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </PagedList>
    </Card>
  );
}

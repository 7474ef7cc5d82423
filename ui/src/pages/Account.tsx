// The key's wallet: balance and ledger (top-ups, holds, captures, releases).
import { query, userApi } from "../api";
import { Card, ErrorBox, PagedList, useLoad, usePaged } from "../components";
import { direction, usd, when } from "../format";
import type { Account as AccountBody, ItemsPage, LedgerItem } from "../types";

export function Account() {
  const account = useLoad(() => userApi<AccountBody>("/v2/account"), []);
  const ledger = usePaged(
    (cursor) =>
      userApi<ItemsPage<LedgerItem>>(`/v2/account/ledger${query({ limit: 25, cursor })}`).then((page) => ({
        items: page.items,
        next: page.next_cursor,
      })),
    [],
  );
  return (
    <div class="stack">
      <Card title="Wallet">
        <ErrorBox error={account.error} />
        {account.data ? (
          <div class="stats">
            <div class="stat">
              <span class="stat-label">Balance</span>
              <span class="stat-value" data-balance={account.data.balance}>
                {usd(account.data.balance)}
              </span>
            </div>
            <div class="stat">
              <span class="stat-label">Key</span>
              <span class="stat-value small mono">{account.data.key_id}</span>
            </div>
            <div class="stat">
              <span class="stat-label">Name</span>
              <span class="stat-value small">{account.data.name || "—"}</span>
            </div>
          </div>
        ) : null}
      </Card>
      <Card title="Ledger">
        <PagedList paged={ledger} empty="No movements yet.">
          <table class="table">
            <thead>
              <tr>
                <th>When</th>
                <th>Kind</th>
                <th class="num">Amount</th>
                <th>Request</th>
              </tr>
            </thead>
            <tbody>
              {ledger.items.map((item) => (
                <tr key={item.id}>
                  <td class="small">{when(item.created_at)}</td>
                  <td>
                    <span class={`badge kind-${item.kind}`}>{item.kind}</span>
                  </td>
                  <td class={`num ${direction(item.amount)}`}>{usd(item.amount)}</td>
                  <td class="mono small">{item.request_id ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </PagedList>
      </Card>
    </div>
  );
}

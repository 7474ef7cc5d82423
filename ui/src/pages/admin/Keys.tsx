// Keys and wallets: create (the key is shown this once), top up, disable, rotate the webhook
// secret, read a key's ledger.
import { useEffect, useState } from "preact/hooks";

import { adminApi } from "../../api";
import { Card, Choice, CopyButton, ErrorBox, PagedList, useAction, usePaged, type Action } from "../../components";
import { direction, usd, when } from "../../format";
import { navigate } from "../../router";
import { signIn } from "../../session";
import type { CreatedKey, KeyDetail, KeyView, LedgerEntryView } from "../../types";
import { adminPage } from "./paging";

function Ledger({ keyId }: { keyId: string }) {
  const ledger = usePaged(adminPage<LedgerEntryView>(`/keys/${encodeURIComponent(keyId)}/ledger`, { limit: 20 }), [keyId]);
  return (
    <div class="nested">
      <PagedList paged={ledger} empty="No movements yet.">
      <table class="table compact">
        <tbody>
          {ledger.items.map((e) => (
            <tr key={e.id}>
              <td class="small">{when(e.created_at)}</td>
              <td>
                <span class={`badge kind-${e.kind}`}>{e.kind}</span>
              </td>
              <td class={`num ${direction(e.amount)}`}>{usd(e.amount)}</td>
              <td class="mono small">{e.job_id ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      </PagedList>
    </div>
  );
}

function KeyRow({ item, onChanged, action }: { item: KeyView; onChanged: (key: KeyView) => void; action: Action }) {
  const [amount, setAmount] = useState("");
  const [secret, setSecret] = useState<string | null>(null);
  const [open, setOpen] = useState(false);
  const act = async (path: string, body?: unknown) => {
    const key = await action.run(() => adminApi<KeyView | KeyDetail>(`/keys/${encodeURIComponent(item.id)}${path}`, { method: "POST", body }));
    if (key) onChanged(key);
    return key;
  };
  const topup = async (event: Event) => {
    event.preventDefault();
    if (await act("/topup", { amount: amount.trim() })) setAmount("");
  };
  return (
    <>
      <tr data-key-id={item.id} class={item.disabled ? "dim" : ""}>
        <td>{item.name || <span class="muted">unnamed</span>}</td>
        <td class="mono small">
          {item.key_prefix}… <span class="muted">{item.id}</span>
        </td>
        <td class="num balance">{usd(item.balance)}</td>
        <td>{item.disabled ? <span class="badge status-canceled">disabled</span> : <span class="badge status-completed">active</span>}</td>
        <td class="small">{when(item.created_at)}</td>
        <td>
          <form class="row" onSubmit={topup}>
            <input class="number" name="topup-amount" placeholder="USD" inputMode="decimal" value={amount} onInput={(e) => setAmount((e.target as HTMLInputElement).value)} />
            <button type="submit" class="small" disabled={!amount.trim()}>
              Top up
            </button>
          </form>
        </td>
        <td>
          <div class="row">
          <button type="button" class="secondary small" onClick={() => act(item.disabled ? "/enable" : "/disable")}>
            {item.disabled ? "Enable" : "Disable"}
          </button>
          <button
            type="button"
            class="secondary small"
            onClick={async () => {
              const key = (await act("/rotate-webhook-secret")) as KeyDetail | null;
              if (key) setSecret(key.webhook_secret);
            }}
          >
            Rotate webhook secret
          </button>
          <button type="button" class="secondary small" onClick={() => setOpen(!open)}>
            {open ? "Hide ledger" : "Ledger"}
          </button>
          </div>
        </td>
      </tr>
      {secret ? (
        <tr>
          <td colSpan={7} class="notice">
            New webhook secret: <code>{secret}</code> <CopyButton text={secret} />
          </td>
        </tr>
      ) : null}
      {open ? (
        <tr>
          <td colSpan={7}>
            <Ledger keyId={item.id} />
          </td>
        </tr>
      ) : null}
    </>
  );
}

export function Keys() {
  const [filter, setFilter] = useState("");
  const keys = usePaged(adminPage<KeyView>("/keys", { limit: 50, disabled: filter || null }), [filter]);
  // Rows changed here since the list was read; a fresh read replaces them.
  const [changed, setChanged] = useState<Record<string, KeyView>>({});
  useEffect(() => setChanged({}), [keys.items]);
  const action = useAction();
  const [name, setName] = useState("");
  const [balance, setBalance] = useState("10");
  const [created, setCreated] = useState<CreatedKey | null>(null);

  const create = async (event: Event) => {
    event.preventDefault();
    const answer = await action.run(() => adminApi<CreatedKey>("/keys", { method: "POST", body: { name: name.trim(), balance: balance.trim() || "0" } }));
    if (!answer) return;
    setCreated(answer);
    setName("");
    keys.reload();
  };

  return (
    <div class="stack">
      <Card title="New key">
        <form class="row wrap" onSubmit={create}>
          <label class="inline">
            Name
            <input name="key-name" value={name} maxLength={200} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          </label>
          <label class="inline">
            Balance (USD)
            <input name="key-balance" class="number" inputMode="decimal" value={balance} onInput={(e) => setBalance((e.target as HTMLInputElement).value)} />
          </label>
          <button type="submit">Create key</button>
        </form>
        {created ? (
          <div class="notice created-key">
            <p>
              Key <strong>{created.key.name || created.key.id}</strong> created with {usd(created.key.balance)}. Copy it now: it is not shown again.
            </p>
            <div class="row">
              <code class="secret" data-api-key={created.api_key}>
                {created.api_key}
              </code>
              <CopyButton text={created.api_key} />
              <button
                type="button"
                class="secondary small"
                onClick={() => {
                  signIn("key", created.api_key);
                  navigate("/playground");
                }}
              >
                Use it in the playground
              </button>
            </div>
          </div>
        ) : null}
      </Card>
      <Card
        title="All keys"
        actions={
          <Choice name="disabled" value={filter} onChange={setFilter} options={[["", "all keys"], ["false", "active"], ["true", "disabled"]]} />
        }
      >
        <ErrorBox error={action.error} />
        <PagedList paged={keys} empty="No keys yet.">
          <table class="table keys">
            <thead>
              <tr>
                <th>Name</th>
                <th>Key</th>
                <th class="num">Balance</th>
                <th>State</th>
                <th>Created</th>
                <th>Top up</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {keys.items.map((item) => (
                <KeyRow key={item.id} item={changed[item.id] ?? item} action={action} onChanged={(k) => setChanged((all) => ({ ...all, [k.id]: k }))} />
              ))}
            </tbody>
          </table>
        </PagedList>
      </Card>
    </div>
  );
}

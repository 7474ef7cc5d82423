// Spend and images per UTC day, per key and per model, over a period.
import { useState } from "preact/hooks";

import { adminApi, query } from "../../api";
import { BarChart, Card, Choice, Empty, ErrorBox, useLoad } from "../../components";
import { usd } from "../../format";
import type { KeyView, Page, UsagePage, UsageRow } from "../../types";

const PERIODS = [
  { days: 7, label: "last 7 days" },
  { days: 30, label: "last 30 days" },
  { days: 90, label: "last 90 days" },
  { days: 0, label: "all time" },
];

function sinceFor(days: number): string | null {
  if (!days) return null;
  const start = new Date();
  start.setUTCHours(0, 0, 0, 0);
  start.setUTCDate(start.getUTCDate() - (days - 1));
  return start.toISOString();
}

// Every page of a grouping (a period has at most a few hundred groups).
async function allRows(params: Record<string, string | null>): Promise<UsagePage> {
  let page = await adminApi<UsagePage>(`/usage${query({ ...params, limit: 500 })}`);
  const rows = [...page.data];
  while (page.next_cursor) {
    page = await adminApi<UsagePage>(`/usage${query({ ...params, limit: 500, cursor: page.next_cursor })}`);
    rows.push(...page.data);
  }
  return { ...page, data: rows };
}

// Each UTC day of the period, empty days included, oldest first.
function daily(rows: UsageRow[], days: number): { day: string; row: UsageRow | null }[] {
  const byDay = new Map(rows.map((r) => [r.day ?? "", r]));
  const count = days || Math.max(rows.length, 1);
  const end = new Date();
  const out = [];
  for (let i = count - 1; i >= 0; i--) {
    const day = new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), end.getUTCDate() - i)).toISOString().slice(0, 10);
    out.push({ day, row: byDay.get(day) ?? null });
  }
  return days ? out : [...rows].reverse().map((r) => ({ day: r.day ?? "", row: r }));
}

function GroupTable({ rows, label, name, names = {} }: { rows: UsageRow[]; label: string; name: "key_id" | "model_id"; names?: Record<string, string> }) {
  if (!rows.length) return <Empty>Nothing in this period.</Empty>;
  const max = Math.max(...rows.map((r) => Number(r.spend)), 0) || 1;
  const sorted = [...rows].sort((a, b) => Number(b.spend) - Number(a.spend) || b.images - a.images);
  return (
    <table class="table">
      <thead>
        <tr>
          <th>{label}</th>
          <th class="num">Requests</th>
          <th class="num">Images</th>
          <th class="num">Spend</th>
          <th class="bar-cell" />
        </tr>
      </thead>
      <tbody>
        {sorted.map((r) => (
          <tr key={r[name]}>
            <td>
              {names[r[name] ?? ""] ? <div>{names[r[name] ?? ""]}</div> : null}
              <span class="mono small">{r[name]}</span>
            </td>
            <td class="num">{r.requests}</td>
            <td class="num">{r.images}</td>
            <td class="num">{usd(r.spend)}</td>
            <td class="bar-cell">
              <div class="hbar" style={{ width: `${(Number(r.spend) / max) * 100}%` }} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Usage() {
  const [days, setDays] = useState(30);
  const [keyId, setKeyId] = useState("");
  const [modelId, setModelId] = useState("");
  const filter = { since: sinceFor(days), key_id: keyId.trim() || null, model_id: modelId.trim() || null };
  const deps = [days, keyId, modelId];
  const byDay = useLoad(() => allRows({ ...filter, group_by: "day" }), deps);
  const byKey = useLoad(() => allRows({ ...filter, group_by: "key" }), deps);
  const byModel = useLoad(() => allRows({ ...filter, group_by: "model" }), deps);
  // Keys by name where the operator gave them one.
  const keys = useLoad(() => adminApi<Page<KeyView>>("/keys?limit=500"), []);
  const keyNames = Object.fromEntries((keys.data?.data ?? []).filter((k) => k.name).map((k) => [k.id, k.name]));
  const totals = byDay.data?.totals;
  const series = daily(byDay.data?.data ?? [], days);
  return (
    <div class="stack">
      <Card
        title="Totals"
        actions={
          <div class="row wrap">
            <Choice name="period" value={String(days)} onChange={(v) => setDays(Number(v))} options={PERIODS.map((p) => [String(p.days), p.label])} />
            <input name="usage-key" placeholder="key id" value={keyId} onChange={(e) => setKeyId((e.target as HTMLInputElement).value)} />
            <input name="usage-model" placeholder="model id" value={modelId} onChange={(e) => setModelId((e.target as HTMLInputElement).value)} />
          </div>
        }
      >
        <ErrorBox error={byDay.error ?? byKey.error ?? byModel.error} />
        {totals ? (
          <div class="stats">
            <div class="stat">
              <span class="stat-label">Spend</span>
              <span class="stat-value">{usd(totals.spend)}</span>
            </div>
            <div class="stat">
              <span class="stat-label">Images</span>
              <span class="stat-value">{totals.images}</span>
            </div>
            <div class="stat">
              <span class="stat-label">Requests ended</span>
              <span class="stat-value">{totals.requests}</span>
            </div>
          </div>
        ) : null}
        <h3>Spend per UTC day</h3>
        <BarChart bars={series.map((d) => ({ label: d.day, value: Number(d.row?.spend ?? 0), hint: `${d.row?.images ?? 0} images` }))} format={usd} />
        <h3>Images per UTC day</h3>
        <BarChart bars={series.map((d) => ({ label: d.day, value: d.row?.images ?? 0, hint: `${d.row?.requests ?? 0} requests` }))} format={(v) => String(Math.round(v))} />
      </Card>
      <div class="columns">
        <Card title="Per key">
          <GroupTable rows={byKey.data?.data ?? []} label="Key" name="key_id" names={keyNames} />
        </Card>
        <Card title="Per model">
          <GroupTable rows={byModel.data?.data ?? []} label="Model" name="model_id" />
        </Card>
      </div>
    </div>
  );
}

// Every catalog model: switch it on or off, set or clear its runtime price, see where it runs.
import { useEffect, useState } from "preact/hooks";

import { adminApi } from "../../api";
import { Card, ErrorBox, useAction, useLoad, type Action } from "../../components";
import { usd } from "../../format";
import type { ModelView, Page } from "../../types";

function ModelRow({ listed, action }: { listed: ModelView; action: Action }) {
  // The row shows the change it asked for at once, then what the server answered.
  const [model, setModel] = useState(listed);
  useEffect(() => setModel(listed), [listed]);
  const [price, setPrice] = useState("");
  const act = async (path: string, method: string, body?: unknown, expected?: Partial<ModelView>) => {
    const before = model;
    if (expected) setModel({ ...model, ...expected });
    const answer = await action.run(() => adminApi<ModelView>(`/models/${encodeURIComponent(model.id)}${path}`, { method, body }));
    setModel(answer ?? before);
    if (answer) setPrice("");
  };
  return (
    <tr data-model-id={model.id} class={model.enabled ? "" : "dim"}>
      <td>
        <strong>{model.id}</strong>
        <div class="muted small">{model.title}</div>
      </td>
      <td class="small">{model.task}</td>
      <td>
        <label class="switch" title={model.config_enabled ? "" : "Off in the config file: the switch alone cannot serve it"}>
          <input type="checkbox" name="enabled" checked={model.switch_enabled} onChange={() => act(model.switch_enabled ? "/disable" : "/enable", "POST", undefined, { switch_enabled: !model.switch_enabled })} />
          {model.enabled ? "on" : model.config_enabled ? "off" : "off (config)"}
        </label>
      </td>
      <td class="num">
        {usd(model.price)}
        <div class="muted small">{model.price_source}</div>
      </td>
      <td>
        <form
          class="row"
          onSubmit={(e) => {
            e.preventDefault();
            act("/price", "PUT", { price: price.trim() });
          }}
        >
          <input class="number" name="price" placeholder="USD / image" inputMode="decimal" value={price} onInput={(e) => setPrice((e.target as HTMLInputElement).value)} />
          <button type="submit" class="small" disabled={!price.trim()}>
            Set
          </button>
          {model.runtime_price !== null ? (
            <button type="button" class="secondary small" onClick={() => act("/price", "DELETE")}>
              Clear
            </button>
          ) : null}
        </form>
      </td>
      <td class="small">{model.loaded ? <span class="badge status-completed">loaded</span> : <span class="muted">not loaded</span>}</td>
      <td class="mono small">{model.workers.length ? model.workers.join(", ") : <span class="muted">no live worker</span>}</td>
    </tr>
  );
}

export function Models() {
  const models = useLoad(() => adminApi<Page<ModelView>>("/models?limit=500"), []);
  const action = useAction();
  return (
    <Card actions={<button type="button" class="secondary small" onClick={models.reload}>Refresh</button>}>
      <ErrorBox error={models.error ?? action.error} />
      <table class="table">
        <thead>
          <tr>
            <th>Model</th>
            <th>Task</th>
            <th>Enabled</th>
            <th class="num">Price</th>
            <th>Runtime price</th>
            <th>Loaded</th>
            <th>Served by</th>
          </tr>
        </thead>
        <tbody>
          {(models.data?.data ?? []).map((m) => (
            <ModelRow key={m.id} listed={m} action={action} />
          ))}
        </tbody>
      </table>
    </Card>
  );
}

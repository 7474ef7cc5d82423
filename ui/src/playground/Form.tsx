// The form generated from a model's request schema: one control per field, by its kind.
import { useState } from "preact/hooks";

import type { FormField, Lora, Size, Values } from "../schema";
import { ImageInput, MaskPainter } from "./inputs";

const CUSTOM = "__custom__";

interface FieldProps {
  field: FormField;
  value: unknown;
  set: (value: unknown) => void;
  invalid: boolean;
  values: Values;
  fields: FormField[];
}

function valueOf(event: Event): string {
  return (event.target as HTMLInputElement).value;
}

function hint(field: FormField): string {
  const parts: string[] = [];
  if (field.min !== undefined && field.max !== undefined) parts.push(`${field.min}–${field.max}`);
  else if (field.min !== undefined) parts.push(`≥ ${field.min}`);
  else if (field.max !== undefined) parts.push(`≤ ${field.max}`);
  if (field.maxItems !== undefined) parts.push(`up to ${field.maxItems}`);
  if (field.default !== undefined && field.default !== null && typeof field.default !== "object" && field.kind !== "boolean") {
    parts.push(`default ${String(field.default).trim() === "" ? "blank" : field.default}`);
  }
  return parts.join(" · ");
}

function step(field: FormField): number | string {
  if (field.multipleOf) return field.multipleOf;
  if (field.kind !== "number") return 1;
  const span = (field.max ?? 100) - (field.min ?? 0);
  return span <= 2 ? 0.01 : span <= 20 ? 0.1 : 0.5;
}

function NumberField({ field, value, set, invalid }: FieldProps) {
  const text = value === null || value === undefined ? "" : String(value);
  const slider = field.min !== undefined && field.max !== undefined && field.max - field.min <= 1000;
  const parse = (raw: string) => set(raw === "" ? "" : Number(raw));
  return (
    <div class="row">
      {slider ? (
        <input type="range" min={field.min} max={field.max} step={step(field)} value={text === "" ? String(field.default ?? field.min) : text} onInput={(e) => parse(valueOf(e))} tabIndex={-1} aria-hidden="true" />
      ) : null}
      <input type="number" class={`number ${invalid ? "invalid" : ""}`} name={field.name} min={field.min} max={field.max} step={step(field)} value={text} onInput={(e) => parse(valueOf(e))} />
    </div>
  );
}

function SeedField({ field, value, set, invalid }: FieldProps) {
  return (
    <div class="row">
      <input
        type="number"
        class={`number ${invalid ? "invalid" : ""}`}
        name={field.name}
        min={field.min}
        max={field.max}
        placeholder="random"
        value={value === null || value === undefined ? "" : String(value)}
        onInput={(e) => set(valueOf(e) === "" ? null : Number(valueOf(e)))}
      />
      <button type="button" class="secondary small" title="A new random seed" onClick={() => set(Math.floor(Math.random() * ((field.max ?? 2 ** 32 - 1) + 1)))}>
        Dice
      </button>
      <button type="button" class="secondary small" title="Let the server draw one" onClick={() => set(null)}>
        Random
      </button>
    </div>
  );
}

function SizeField({ field, value, set, invalid }: FieldProps) {
  const custom = value !== null && typeof value === "object";
  const size = custom ? (value as Size) : { width: 1024, height: 1024 };
  const range = field.sizeRange;
  const side = (name: "width" | "height") => (
    <label class="inline">
      {name}
      <input
        type="number"
        class={`number ${invalid ? "invalid" : ""}`}
        name={`${field.name}.${name}`}
        min={range?.min}
        max={range?.max}
        step={range?.multipleOf}
        value={String(size[name])}
        onInput={(e) => set({ ...size, [name]: Number(valueOf(e)) })}
      />
    </label>
  );
  return (
    <div class="row wrap">
      <select name={field.name} class={invalid ? "invalid" : ""} value={custom ? CUSTOM : String(value ?? "")} onChange={(e) => set(valueOf(e) === CUSTOM ? { width: 512, height: 512 } : valueOf(e))}>
        {field.presets?.map((p) => <option value={p}>{p}</option>)}
        {range ? <option value={CUSTOM}>custom…</option> : null}
      </select>
      {custom ? (
        <>
          {side("width")}
          {side("height")}
          <span class="muted small">
            {range ? `${range.min}–${range.max}, multiples of ${range.multipleOf}` : null}
          </span>
        </>
      ) : null}
    </div>
  );
}

function ImagesField({ field, value, set }: FieldProps) {
  const urls = (value as string[]) ?? [];
  const max = field.maxItems ?? 10;
  const shown = urls.length ? urls : [""];
  return (
    <div class="stack">
      {shown.map((url, i) => (
        <div class="row top">
          <ImageInput name={`${field.name}[${i}]`} value={url} onChange={(next) => set(shown.map((u, j) => (j === i ? next : u)))} />
          {shown.length > 1 ? (
            <button type="button" class="secondary small" onClick={() => set(shown.filter((_, j) => j !== i))}>
              Remove
            </button>
          ) : null}
        </div>
      ))}
      {shown.length < max ? (
        <button type="button" class="secondary small self-start" onClick={() => set([...shown, ""])}>
          Add image
        </button>
      ) : null}
    </div>
  );
}

function LorasField({ field, value, set }: FieldProps) {
  const loras = (value as Lora[]) ?? [];
  const scale = field.loraScale ?? { min: 0, max: 2, default: 1 };
  const update = (i: number, patch: Partial<Lora>) => set(loras.map((l, j) => (j === i ? { ...l, ...patch } : l)));
  return (
    <div class="stack">
      {loras.map((lora, i) => (
        <div class="row">
          <input type="url" name={`${field.name}[${i}].path`} placeholder="https://…/lora.safetensors" value={lora.path} onInput={(e) => update(i, { path: valueOf(e) })} />
          <input type="number" class="number" min={scale.min} max={scale.max} step={0.05} value={String(lora.scale)} onInput={(e) => update(i, { scale: Number(valueOf(e)) })} />
          <button type="button" class="secondary small" onClick={() => set(loras.filter((_, j) => j !== i))}>
            Remove
          </button>
        </div>
      ))}
      {loras.length < (field.maxItems ?? 3) ? (
        <button type="button" class="secondary small self-start" onClick={() => set([...loras, { path: "", scale: scale.default }])}>
          Add LoRA
        </button>
      ) : null}
    </div>
  );
}

function MaskField(props: FieldProps) {
  const { field, value, set, values, fields, invalid } = props;
  const [painting, setPainting] = useState(false);
  // The picture the mask belongs to: the form's single-image input.
  const source = fields.find((f) => f.kind === "image");
  const picture = source ? String(values[source.name] ?? "") : "";
  return (
    <div class="stack">
      <ImageInput name={field.name} value={String(value ?? "")} onChange={set} invalid={invalid} />
      {picture ? (
        painting ? (
          <MaskPainter image={picture} onClose={() => setPainting(false)} onDone={(url) => { set(url); setPainting(false); }} />
        ) : (
          <button type="button" class="secondary small self-start" onClick={() => setPainting(true)}>
            Paint the mask over {source?.label.toLowerCase()}
          </button>
        )
      ) : null}
    </div>
  );
}

function Control(props: FieldProps) {
  const { field, value, set, invalid } = props;
  switch (field.kind) {
    case "text":
      return <input type="text" name={field.name} class={invalid ? "invalid" : ""} maxLength={field.maxLength} value={String(value ?? "")} onInput={(e) => set(valueOf(e))} />;
    case "textarea":
      return <textarea name={field.name} class={invalid ? "invalid" : ""} rows={3} maxLength={field.maxLength} value={String(value ?? "")} onInput={(e) => set(valueOf(e))} />;
    case "integer":
    case "number":
      return <NumberField {...props} />;
    case "seed":
      return <SeedField {...props} />;
    case "boolean":
      return (
        <label class="inline">
          <input type="checkbox" name={field.name} checked={Boolean(value)} onChange={(e) => set((e.target as HTMLInputElement).checked)} />
          {value ? "yes" : "no"}
        </label>
      );
    case "enum":
      return (
        <select name={field.name} class={invalid ? "invalid" : ""} value={String(value ?? "")} onChange={(e) => set(valueOf(e))}>
          {field.required || field.default !== undefined ? null : <option value="">—</option>}
          {field.options?.map((o) => <option value={o}>{o}</option>)}
        </select>
      );
    case "size":
      return <SizeField {...props} />;
    case "image":
      return <ImageInput name={field.name} value={String(value ?? "")} onChange={set} invalid={invalid} />;
    case "dataset":
      return <ImageInput name={field.name} value={String(value ?? "")} onChange={set} invalid={invalid} accept=".zip,application/zip,image/*" />;
    case "mask":
      return <MaskField {...props} />;
    case "images":
      return <ImagesField {...props} />;
    case "loras":
      return <LorasField {...props} />;
    case "choices": {
      const picked = new Set((value as string[]) ?? []);
      return (
        <div class="row wrap">
          {field.options?.map((o) => (
            <label class="inline">
              <input type="checkbox" checked={picked.has(o)} onChange={(e) => set(field.options!.filter((x) => (x === o ? (e.target as HTMLInputElement).checked : picked.has(x))))} />
              {o}
            </label>
          ))}
        </div>
      );
    }
    case "json":
      return <textarea name={field.name} class={`mono ${invalid ? "invalid" : ""}`} rows={2} placeholder="JSON" value={String(value ?? "")} onInput={(e) => set(valueOf(e))} />;
  }
}

export function SchemaForm({ fields, values, onChange, invalidField }: { fields: FormField[]; values: Values; onChange: (values: Values) => void; invalidField: string | null }) {
  const row = (field: FormField) => {
    const invalid = invalidField !== null && (invalidField === field.name || invalidField.startsWith(`${field.name}.`) || invalidField.startsWith(`${field.name}[`));
    return (
      <div class={`field ${invalid ? "field-invalid" : ""}`} data-field={field.name} key={field.name}>
        <div class="field-head">
          <span class="field-label">
            {field.label}
            {field.required ? <span class="required"> *</span> : null}
          </span>
          <span class="muted small">{hint(field)}</span>
        </div>
        <Control field={field} value={values[field.name]} set={(v) => onChange({ ...values, [field.name]: v })} invalid={invalid} values={values} fields={fields} />
        {field.description ? <p class="muted small">{field.description}</p> : null}
      </div>
    );
  };
  const main = fields.filter((f) => !f.advanced);
  const advanced = fields.filter((f) => f.advanced);
  return (
    <div class="schema-form">
      {main.map(row)}
      {advanced.length ? (
        <details class="advanced">
          <summary>Delivery options ({advanced.map((f) => f.name).join(", ")})</summary>
          {advanced.map(row)}
        </details>
      ) : null}
    </div>
  );
}

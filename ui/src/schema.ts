// A model's request JSON schema (from GET /v2/models) turned into form fields, and the form's
// values turned back into the request body. Pure functions: the playground renders them and the
// unit tests check them against real schemas.

export type JsonSchema = {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  multipleOf?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  pattern?: string;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  definitions?: Record<string, JsonSchema>;
};

// What the catalog says an input field takes (CatalogEntry.inputs).
export type InputKind = "image" | "images" | "mask" | "loras" | "dataset";

export type FieldKind =
  | "text"
  | "textarea"
  | "integer"
  | "number"
  | "boolean"
  | "enum"
  | "seed"
  | "size"
  | "image"
  | "images"
  | "mask"
  | "dataset"
  | "loras"
  | "choices"
  | "json";

export type Size = { width: number; height: number };
export type Lora = { path: string; scale: number };

export interface FormField {
  name: string;
  label: string;
  kind: FieldKind;
  required: boolean;
  nullable: boolean;
  default?: unknown;
  description?: string;
  min?: number;
  max?: number;
  multipleOf?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  options?: string[];
  // The enum's values as the schema types them (an integer enum's 1024, not "1024").
  enumValues?: unknown[];
  // image_size: the preset names, and the custom size's rule.
  presets?: string[];
  sizeRange?: { min: number; max: number; multipleOf: number };
  loraScale?: { min: number; max: number; default: number };
  // Fields most people leave alone (webhooks, sync_mode): shown folded.
  advanced: boolean;
}

export type Values = Record<string, unknown>;

// Delivery knobs of the API, not of the picture: shown folded.
const ADVANCED = new Set(["webhook", "webhook_url", "webhook_events_filter"]);
// The playground follows the request's event stream; a sync answer would hide its progress.
const NOT_IN_FORM = new Set(["sync_mode"]);

function resolve(schema: JsonSchema, root: JsonSchema): JsonSchema {
  let current = schema;
  for (let depth = 0; current.$ref && depth < 16; depth++) {
    const match = /^#\/(\$defs|definitions)\/(.+)$/.exec(current.$ref);
    const target = match ? (root[match[1] as "$defs" | "definitions"] ?? {})[match[2]] : undefined;
    if (!target) break;
    const { $ref: _ignored, ...rest } = current;
    current = { ...target, ...rest };
  }
  return current;
}

function typesOf(schema: JsonSchema): string[] {
  if (Array.isArray(schema.type)) return schema.type;
  return schema.type ? [schema.type] : [];
}

// `anyOf: [X, {type: null}]` is pydantic's optional X.
function unwrapNullable(schema: JsonSchema, root: JsonSchema): { schema: JsonSchema; nullable: boolean } {
  const variants = schema.anyOf ?? schema.oneOf;
  if (variants) {
    const resolved = variants.map((v) => resolve(v, root));
    const others = resolved.filter((v) => !typesOf(v).includes("null") || typesOf(v).length > 1);
    const nullable = others.length < resolved.length;
    if (others.length === 1) {
      const { anyOf: _a, oneOf: _o, ...outer } = schema;
      return { schema: { ...others[0], ...outer }, nullable };
    }
    return { schema, nullable };
  }
  const types = typesOf(schema);
  if (types.includes("null") && types.length === 2) {
    return { schema: { ...schema, type: types.find((t) => t !== "null") }, nullable: true };
  }
  return { schema, nullable: false };
}

function humanise(name: string): string {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function sizeField(schema: JsonSchema, root: JsonSchema): Pick<FormField, "presets" | "sizeRange"> | null {
  const variants = (schema.anyOf ?? schema.oneOf ?? []).map((v) => resolve(v, root));
  const presets = variants.find((v) => Array.isArray(v.enum))?.enum;
  const custom = variants.find((v) => v.properties?.width && v.properties?.height);
  if (!presets && !custom) return null;
  const side = custom?.properties?.width ?? {};
  return {
    presets: (presets ?? []).map(String),
    sizeRange: custom
      ? { min: side.minimum ?? 64, max: side.maximum ?? 2048, multipleOf: side.multipleOf ?? 16 }
      : undefined,
  };
}

function isLoraList(schema: JsonSchema, root: JsonSchema): JsonSchema | null {
  if (!typesOf(schema).includes("array") || !schema.items) return null;
  const item = resolve(schema.items, root);
  return item.properties?.path && item.properties?.scale ? item : null;
}

export function fieldsOf(schema: JsonSchema, inputs: Record<string, string> = {}): FormField[] {
  const required = new Set(schema.required ?? []);
  const properties = Object.entries(schema.properties ?? {}).filter(([name]) => !NOT_IN_FORM.has(name));
  return properties.map(([name, raw]) => {
    const { schema: prop, nullable } = unwrapNullable(resolve(raw, schema), schema);
    const base: FormField = {
      name,
      label: prop.title ?? humanise(name),
      kind: "json",
      required: required.has(name),
      nullable,
      default: prop.default,
      description: prop.description,
      advanced: ADVANCED.has(name),
    };
    const input = inputs[name] as InputKind | undefined;
    if (input === "image" || input === "mask" || input === "dataset") return { ...base, kind: input };
    if (input === "images") return { ...base, kind: "images", minItems: prop.minItems, maxItems: prop.maxItems };
    const lora = isLoraList(prop, schema);
    if (input === "loras" || lora) {
      const scale = lora?.properties?.scale ?? {};
      return {
        ...base,
        kind: "loras",
        maxItems: prop.maxItems,
        loraScale: { min: scale.minimum ?? 0, max: scale.maximum ?? 2, default: Number(scale.default ?? 1) },
      };
    }
    const size = sizeField(prop, schema);
    if (size) return { ...base, kind: "size", ...size };
    const types = typesOf(prop);
    if (Array.isArray(prop.enum)) return { ...base, kind: "enum", options: prop.enum.map(String), enumValues: prop.enum };
    if (types.includes("boolean")) return { ...base, kind: "boolean" };
    const ranged = { min: prop.minimum ?? prop.exclusiveMinimum, max: prop.maximum ?? prop.exclusiveMaximum, multipleOf: prop.multipleOf };
    if (types.includes("integer")) return { ...base, ...ranged, kind: name === "seed" ? "seed" : "integer" };
    if (types.includes("number")) return { ...base, ...ranged, kind: "number" };
    if (types.includes("string")) {
      const long = /prompt|instruction|caption/i.test(name) || (prop.maxLength ?? 0) > 300;
      return { ...base, kind: long ? "textarea" : "text", maxLength: prop.maxLength };
    }
    if (types.includes("array") && prop.items && Array.isArray(resolve(prop.items, schema).enum)) {
      return {
        ...base,
        kind: "choices",
        options: (resolve(prop.items, schema).enum ?? []).map(String),
        minItems: prop.minItems,
        maxItems: prop.maxItems,
      };
    }
    return base;
  });
}

function clone<T>(value: T): T {
  return value === undefined ? value : (JSON.parse(JSON.stringify(value)) as T);
}

// The form's starting values: the schema's defaults, empty where there is none.
export function initialValues(fields: FormField[]): Values {
  const values: Values = {};
  for (const field of fields) {
    switch (field.kind) {
      case "images":
      case "loras":
        values[field.name] = clone(field.default) ?? [];
        break;
      case "choices":
        values[field.name] = clone(field.default) ?? [];
        break;
      case "json":
        values[field.name] = field.default === undefined ? "" : JSON.stringify(field.default);
        break;
      case "boolean":
        values[field.name] = field.default ?? false;
        break;
      default:
        values[field.name] = clone(field.default) ?? (field.kind === "seed" ? null : "");
    }
  }
  return values;
}

// Values of an earlier request laid over the defaults (a re-run, a request from the history).
export function valuesFromBody(fields: FormField[], body: Values): Values {
  const values = initialValues(fields);
  for (const field of fields) {
    if (!(field.name in body)) continue;
    const value = body[field.name];
    values[field.name] = field.kind === "json" ? JSON.stringify(value) : clone(value);
  }
  return values;
}

export class FieldError extends Error {
  constructor(
    readonly field: string,
    readonly rule: string,
  ) {
    super(`${field} ${rule}`);
  }
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function checkRange(field: FormField, value: number): void {
  if (!Number.isFinite(value)) throw new FieldError(field.name, "must be a number");
  if (field.kind !== "number" && !Number.isInteger(value)) throw new FieldError(field.name, "must be an integer");
  if (field.min !== undefined && value < field.min) throw new FieldError(field.name, `must be ≥ ${field.min}`);
  if (field.max !== undefined && value > field.max) throw new FieldError(field.name, `must be ≤ ${field.max}`);
  if (field.multipleOf && Math.abs(value / field.multipleOf - Math.round(value / field.multipleOf)) > 1e-9) {
    throw new FieldError(field.name, `must be a multiple of ${field.multipleOf}`);
  }
}

function numeric(field: FormField, raw: unknown): number | undefined {
  if (raw === "" || raw === null || raw === undefined) return undefined;
  const value = typeof raw === "number" ? raw : Number(String(raw).trim());
  checkRange(field, value);
  return value;
}

// One field's value as the request sends it; undefined leaves it out.
function bodyValue(field: FormField, raw: unknown): unknown {
  switch (field.kind) {
    case "integer":
    case "number":
    case "seed":
      return numeric(field, raw);
    case "boolean":
      return Boolean(raw);
    case "enum": {
      if (raw === "" || raw === null || raw === undefined) return undefined;
      const index = (field.options ?? []).indexOf(String(raw));
      if (index < 0) throw new FieldError(field.name, `must be one of: ${(field.options ?? []).join(", ")}`);
      return (field.enumValues ?? field.options ?? [])[index];
    }
    case "text":
    case "textarea":
    case "image":
    case "mask":
    case "dataset": {
      const text = typeof raw === "string" ? raw : raw == null ? "" : String(raw);
      if (field.maxLength !== undefined && text.length > field.maxLength) {
        throw new FieldError(field.name, `must be at most ${field.maxLength} characters`);
      }
      // Blank text is left out: a required field then says so, an optional one takes its default.
      return text.trim() === "" ? undefined : text;
    }
    case "size": {
      if (raw && typeof raw === "object") {
        const size = raw as Size;
        const range = field.sizeRange ?? { min: 64, max: 2048, multipleOf: 16 };
        for (const side of ["width", "height"] as const) {
          const sideField: FormField = { ...field, name: `${field.name}.${side}`, kind: "integer", ...range };
          checkRange(sideField, Number(size[side]));
        }
        return { width: Number(size.width), height: Number(size.height) };
      }
      return raw === "" ? undefined : raw;
    }
    case "images": {
      const urls = ((raw as string[]) ?? []).map((u) => u.trim()).filter(Boolean);
      if (field.maxItems !== undefined && urls.length > field.maxItems) {
        throw new FieldError(field.name, `must have at most ${field.maxItems} item(s)`);
      }
      return urls.length ? urls : undefined;
    }
    case "loras": {
      const loras = ((raw as Lora[]) ?? []).filter((l) => l.path.trim());
      return loras.length ? loras.map((l) => ({ path: l.path.trim(), scale: Number(l.scale) })) : undefined;
    }
    case "choices": {
      const picked = (raw as string[]) ?? [];
      return picked.length ? picked : undefined;
    }
    case "json": {
      const text = String(raw ?? "").trim();
      if (!text) return undefined;
      try {
        return JSON.parse(text);
      } catch {
        throw new FieldError(field.name, "must be valid JSON");
      }
    }
  }
}

// The request body: required fields, and every field whose value is not the schema's default.
// Throws FieldError naming the first field that breaks its rule.
export function buildBody(fields: FormField[], values: Values): Values {
  const body: Values = {};
  for (const field of fields) {
    const value = bodyValue(field, values[field.name]);
    if (value === undefined) {
      if (field.required) throw new FieldError(field.name, "is required");
      continue;
    }
    if (field.kind === "images" && field.minItems && (value as unknown[]).length < field.minItems) {
      throw new FieldError(field.name, `must have at least ${field.minItems} item(s)`);
    }
    if (!field.required && field.default !== undefined && same(value, field.default)) continue;
    body[field.name] = value;
  }
  return body;
}

// The images a request sends, by field: what the gallery shows beside the result.
export function imageInputs(fields: FormField[], body: Values): string[] {
  const urls: string[] = [];
  for (const field of fields) {
    const value = body[field.name];
    if (field.kind === "image" || field.kind === "mask") {
      if (typeof value === "string") urls.push(value);
    } else if (field.kind === "images" && Array.isArray(value)) {
      urls.push(...value.filter((v): v is string => typeof v === "string"));
    }
  }
  return urls;
}

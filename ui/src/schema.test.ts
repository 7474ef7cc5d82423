import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

import { buildBody, FieldError, fieldsOf, initialValues, valuesFromBody, type JsonSchema, type Values } from "./schema";
import type { CatalogEntry } from "./types";

const imageSize: JsonSchema = {
  anyOf: [
    { type: "string", enum: ["square_hd", "square"] },
    { type: "object", properties: { width: { type: "integer", minimum: 64, maximum: 2048, multipleOf: 16 }, height: { type: "integer", minimum: 64, maximum: 2048, multipleOf: 16 } }, required: ["width", "height"] },
  ],
  default: "square_hd",
};

const schema: JsonSchema = {
  type: "object",
  required: ["prompt", "image"],
  $defs: { LoraWeight: { type: "object", properties: { path: { type: "string" }, scale: { type: "number", minimum: 0, maximum: 2, default: 1 } }, required: ["path"] } },
  properties: {
    prompt: { type: "string", maxLength: 100 },
    image: { type: "string" },
    image_size: imageSize,
    num_inference_steps: { type: "integer", minimum: 1, maximum: 50, default: 28 },
    guidance_scale: { type: "number", minimum: 1, maximum: 20, default: 3.5 },
    output_format: { type: "string", enum: ["jpeg", "png"], default: "jpeg" },
    width: { type: "integer", enum: [512, 1024], default: 1024 },
    enable_safety_checker: { type: "boolean", default: true },
    seed: { anyOf: [{ type: "integer", minimum: 0, maximum: 4294967295 }, { type: "null" }], default: null },
    loras: { type: "array", items: { $ref: "#/$defs/LoraWeight" }, maxItems: 3 },
    sync_mode: { type: "boolean", default: false },
    webhook: { anyOf: [{ type: "string" }, { type: "null" }], default: null },
  },
};

describe("fieldsOf", () => {
  const fields = fieldsOf(schema, { image: "image" });
  const byName = Object.fromEntries(fields.map((f) => [f.name, f]));

  it("gives each field the control its schema calls for", () => {
    expect(Object.fromEntries(fields.map((f) => [f.name, f.kind]))).toEqual({
      prompt: "textarea",
      image: "image",
      image_size: "size",
      num_inference_steps: "integer",
      guidance_scale: "number",
      output_format: "enum",
      width: "enum",
      enable_safety_checker: "boolean",
      seed: "seed",
      loras: "loras",
      webhook: "text",
    });
  });

  it("keeps ranges, enums, presets and defaults", () => {
    expect(byName.num_inference_steps).toMatchObject({ min: 1, max: 50, default: 28 });
    expect(byName.output_format.options).toEqual(["jpeg", "png"]);
    expect(byName.image_size).toMatchObject({ presets: ["square_hd", "square"], sizeRange: { min: 64, max: 2048, multipleOf: 16 } });
    expect(byName.seed).toMatchObject({ nullable: true, max: 4294967295 });
    expect(byName.loras.loraScale).toEqual({ min: 0, max: 2, default: 1 });
    expect(byName.webhook.advanced).toBe(true);
  });

  it("sends the required fields and what differs from the defaults", () => {
    const values = { ...initialValues(fields), prompt: "a cat", image: "https://example.com/a.png", num_inference_steps: 4 };
    expect(buildBody(fields, values)).toEqual({ prompt: "a cat", image: "https://example.com/a.png", num_inference_steps: 4 });
    const custom = { ...values, image_size: { width: 64, height: 80 }, seed: 42, width: "512" };
    expect(buildBody(fields, custom)).toMatchObject({ image_size: { width: 64, height: 80 }, seed: 42, width: 512 });
  });

  it("names the field and the rule it breaks", () => {
    const values = { ...initialValues(fields), prompt: "a cat", image: "https://example.com/a.png" };
    const broken = (patch: Values) => {
      try {
        buildBody(fields, { ...values, ...patch });
      } catch (err) {
        return err instanceof FieldError ? `${err.field} ${err.rule}` : String(err);
      }
      return "accepted";
    };
    expect(broken({ prompt: "  " })).toBe("prompt is required");
    expect(broken({ num_inference_steps: 51 })).toBe("num_inference_steps must be ≤ 50");
    expect(broken({ num_inference_steps: 2.5 })).toBe("num_inference_steps must be an integer");
    expect(broken({ image_size: { width: 70, height: 64 } })).toBe("image_size.width must be a multiple of 16");
  });

  it("lays an earlier request over the defaults", () => {
    const values = valuesFromBody(fields, { prompt: "again", seed: 9, image_size: "square" });
    expect(values).toMatchObject({ prompt: "again", seed: 9, image_size: "square", num_inference_steps: 28 });
  });
});

// Every schema of the real catalog, when the Python test that runs this suite exported it: each
// field gets a control, and the body built from the defaults (required fields filled in) goes
// back for the server's own validator to judge.
const exported = process.env.IMAGEGATE_CATALOG_JSON;
describe.runIf(Boolean(exported))("the catalog's schemas", () => {
  const catalog = exported ? (JSON.parse(readFileSync(exported, "utf8")) as CatalogEntry[]) : [];
  const sample: Record<string, unknown> = { image: "https://example.com/a.png", mask: "https://example.com/m.png", dataset: "https://example.com/d.zip", images: ["https://example.com/a.png"] };

  it("every field of every model gets a control of its own", () => {
    const generic = catalog.flatMap((m) => fieldsOf(m.request_schema, m.inputs).filter((f) => f.kind === "json").map((f) => `${m.id}.${f.name}`));
    expect(generic).toEqual([]);
  });

  it("the defaults with the required fields filled in build a body", () => {
    const bodies: Record<string, Values> = {};
    for (const model of catalog) {
      const fields = fieldsOf(model.request_schema, model.inputs);
      const values = initialValues(fields);
      for (const field of fields.filter((f) => f.required)) {
        values[field.name] = sample[field.kind] ?? (field.kind === "enum" ? field.options![0] : "a lighthouse at dusk");
      }
      bodies[model.id] = buildBody(fields, values);
    }
    writeFileSync(`${exported}.bodies.json`, JSON.stringify(bodies));
    expect(Object.keys(bodies).length).toBe(catalog.length);
  });
});

// Image inputs of the generated form: a URL typed in, or a file uploaded to POST /v2/files, and
// for masks a brush over the picture being edited.
import { useEffect, useRef, useState } from "preact/hooks";

import { userApi } from "../api";
import { ErrorBox, useAction } from "../components";
import { bytes } from "../format";
import type { Uploaded } from "../types";

// Uploaded URLs answer only to the key's header, so an <img> cannot show them: the preview is
// the local file the upload came from.
const previews = new Map<string, string>();

export function previewOf(url: string): string {
  return previews.get(url) ?? url;
}

export async function upload(file: Blob, name: string): Promise<Uploaded> {
  const form = new FormData();
  form.append("file", file, name);
  const uploaded = await userApi<Uploaded>("/v2/files", { method: "POST", form });
  previews.set(uploaded.url, URL.createObjectURL(file));
  return uploaded;
}

interface ImageInputProps {
  name: string;
  value: string;
  onChange: (url: string) => void;
  accept?: string;
  invalid?: boolean;
}

export function ImageInput({ name, value, onChange, accept = "image/*", invalid }: ImageInputProps) {
  const sending = useAction();
  const [note, setNote] = useState<string | null>(null);
  const fileInput = useRef<HTMLInputElement>(null);

  const pick = async (event: Event) => {
    const file = (event.target as HTMLInputElement).files?.[0];
    if (!file) return;
    const uploaded = await sending.run(() => upload(file, file.name));
    if (fileInput.current) fileInput.current.value = "";
    if (!uploaded) return;
    setNote(`${file.name} · ${bytes(uploaded.size)} uploaded`);
    onChange(uploaded.url);
  };

  const isPicture = accept.startsWith("image");
  return (
    <div class="image-input">
      <div class="row">
        <input
          type="url"
          name={name}
          class={invalid ? "invalid" : ""}
          placeholder="https://… or upload a file"
          value={value}
          onInput={(e) => {
            setNote(null);
            onChange((e.target as HTMLInputElement).value);
          }}
        />
        <button type="button" class="secondary" disabled={sending.busy} onClick={() => fileInput.current?.click()}>
          {sending.busy ? "Uploading…" : "Upload…"}
        </button>
        <input ref={fileInput} type="file" accept={accept} hidden data-field={name} onChange={pick} />
      </div>
      {note ? <p class="muted small">{note}</p> : null}
      <ErrorBox error={sending.error} />
      {value && isPicture ? <img class="input-preview" src={previewOf(value)} alt="" referrerpolicy="no-referrer" /> : null}
    </div>
  );
}

// Paints a mask over `image`: white where the model should paint, black where it keeps the
// picture (FLUX.1 Fill's convention). The result is uploaded like any file.
export function MaskPainter({ image, onDone, onClose }: { image: string; onDone: (url: string) => void; onClose: () => void }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const picture = useRef<HTMLImageElement>(null);
  const [brush, setBrush] = useState(24);
  const [size, setSize] = useState<{ w: number; h: number } | null>(null);
  const sending = useAction();
  const drawing = useRef(false);

  useEffect(() => {
    const img = picture.current;
    if (!img) return;
    const ready = () => setSize({ w: img.naturalWidth, h: img.naturalHeight });
    if (img.complete && img.naturalWidth) ready();
    else img.addEventListener("load", ready, { once: true });
  }, [image]);

  const paint = (event: PointerEvent) => {
    const c = canvas.current;
    if (!c || !drawing.current) return;
    const rect = c.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * c.width;
    const y = ((event.clientY - rect.top) / rect.height) * c.height;
    const ctx = c.getContext("2d")!;
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(x, y, (brush * c.width) / rect.width, 0, Math.PI * 2);
    ctx.fill();
  };

  const save = async () => {
    const c = canvas.current;
    if (!c) return;
    const out = document.createElement("canvas");
    out.width = c.width;
    out.height = c.height;
    const ctx = out.getContext("2d")!;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(c, 0, 0);
    const uploaded = await sending.run(async () => {
      const blob = await new Promise<Blob>((resolve, reject) => out.toBlob((b) => (b ? resolve(b) : reject(new Error("the browser made no PNG"))), "image/png"));
      return upload(blob, "mask.png");
    });
    if (uploaded) onDone(uploaded.url);
  };

  const clear = () => {
    const c = canvas.current;
    c?.getContext("2d")?.clearRect(0, 0, c.width, c.height);
  };

  return (
    <div class="mask-painter">
      <div class="mask-stage">
        <img ref={picture} src={previewOf(image)} alt="" referrerpolicy="no-referrer" />
        {size ? (
          <canvas
            ref={canvas}
            width={size.w}
            height={size.h}
            onPointerDown={(e) => {
              drawing.current = true;
              (e.target as HTMLCanvasElement).setPointerCapture(e.pointerId);
              paint(e as unknown as PointerEvent);
            }}
            onPointerMove={(e) => paint(e as unknown as PointerEvent)}
            onPointerUp={() => (drawing.current = false)}
          />
        ) : null}
      </div>
      <div class="row">
        <label class="inline">
          Brush
          <input type="range" min={4} max={96} value={brush} onInput={(e) => setBrush(Number((e.target as HTMLInputElement).value))} />
        </label>
        <button type="button" class="secondary" onClick={clear}>
          Clear
        </button>
        <button type="button" class="secondary" onClick={onClose}>
          Close
        </button>
        <button type="button" disabled={sending.busy || !size} onClick={save}>
          {sending.busy ? "Uploading…" : "Use this mask"}
        </button>
      </div>
      <ErrorBox error={sending.error} />
    </div>
  );
}

// How the console writes money, times and sizes.

export function usd(amount: string | number | null | undefined): string {
  if (amount === null || amount === undefined || amount === "") return "—";
  const value = Number(amount);
  if (!Number.isFinite(value)) return String(amount);
  // Cents at least, micro-dollars where a price has them ($0.0003).
  const [whole, fraction] = Math.abs(value).toFixed(6).split(".");
  return `${value < 0 ? "−" : ""}$${whole}.${fraction.replace(/0+$/, "").padEnd(2, "0")}`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function ago(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function bytes(size: number): string {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

// The colour class of a signed amount: red out of the wallet, green into it, plain for zero.
export function direction(amount: string | number): string {
  const value = Number(amount);
  return value < 0 ? "negative" : value > 0 ? "positive" : "";
}

export function percent(progress: number | null | undefined): string {
  return `${Math.round((progress ?? 0) * 100)}%`;
}

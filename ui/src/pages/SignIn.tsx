// Sign-in cards: a user pastes an API key, an operator the admin token. Both are checked against
// the server before they are kept (sessionStorage only).
import { useState } from "preact/hooks";

import { ApiError, KEY_HEADER, lastRefusal, errorOf } from "../api";
import { ErrorBox } from "../components";
import { signIn, type Credential } from "../session";

const COPY: Record<Credential, { title: string; label: string; help: string; check: string }> = {
  key: {
    title: "Sign in with your API key",
    label: "API key",
    help: "Your key (ig_…) from your operator or `imagegate keys create`. It stays in this tab's session storage and is sent only to this server.",
    check: "/v2/account",
  },
  admin: {
    title: "Operator sign-in",
    label: "Admin token",
    help: "The admin token: the admin_token setting (IMAGEGATE_ADMIN_TOKEN) or the one `imagegate admin token --rotate` printed.",
    check: "/admin/v1/workers?limit=1",
  },
};

export function SignIn({ kind }: { kind: Credential }) {
  const copy = COPY[kind];
  const [value, setValue] = useState("");
  const [error, setError] = useState<ApiError | null>(() => {
    const refused = lastRefusal[kind];
    lastRefusal[kind] = null;
    return refused ? new ApiError(401, `Signed out: ${refused}`) : null;
  });
  const [busy, setBusy] = useState(false);

  const submit = async (event: Event) => {
    event.preventDefault();
    const secret = value.trim();
    if (!secret) return;
    setBusy(true);
    setError(null);
    const headers: Record<string, string> = kind === "admin" ? { Authorization: `Bearer ${secret}` } : { [KEY_HEADER]: secret };
    try {
      const response = await fetch(copy.check, { headers });
      if (response.ok) {
        signIn(kind, secret);
        return;
      }
      const body = await response.json().catch(() => null);
      const refused = errorOf(response.status, body);
      if (kind === "admin" && response.status === 404) {
        setError(new ApiError(404, "The admin API is off on this server: set admin_token (IMAGEGATE_ADMIN_TOKEN) or run `imagegate admin token --rotate`."));
      } else {
        setError(refused);
      }
    } catch (err) {
      setError(new ApiError(0, `The server did not answer: ${String(err)}`));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="signin">
      <form class="card" onSubmit={submit}>
        <h2>{copy.title}</h2>
        <p class="muted">{copy.help}</p>
        <label>
          {copy.label}
          <input
            type="password"
            name={kind === "admin" ? "admin-token" : "api-key"}
            autocomplete="off"
            spellcheck={false}
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          />
        </label>
        <ErrorBox error={error} />
        <button type="submit" disabled={busy || !value.trim()}>
          {busy ? "Checking…" : "Sign in"}
        </button>
      </form>
    </div>
  );
}

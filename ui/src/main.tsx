// The console's shell: navigation, who is signed in, and the page for the current path.
import type { ComponentChildren } from "preact";
import { render } from "preact";
import { useEffect } from "preact/hooks";

import { Link } from "./components";
import { Account } from "./pages/Account";
import { Audit } from "./pages/admin/Audit";
import { Keys } from "./pages/admin/Keys";
import { Models } from "./pages/admin/Models";
import { Queue } from "./pages/admin/Queue";
import { Usage } from "./pages/admin/Usage";
import { Webhooks } from "./pages/admin/Webhooks";
import { Workers } from "./pages/admin/Workers";
import { History } from "./pages/History";
import { SignIn } from "./pages/SignIn";
import { Playground } from "./playground/Playground";
import { navigate, useRoute } from "./router";
import { signOut, useCredential, type Credential } from "./session";
import "./styles.css";

interface Page {
  path: string;
  title: string;
  needs: Credential;
  view: (rest: string | null) => ComponentChildren;
}

const PAGES: Page[] = [
  { path: "/playground", title: "Playground", needs: "key", view: (rest) => <Playground modelId={rest} /> },
  { path: "/history", title: "History", needs: "key", view: () => <History /> },
  { path: "/account", title: "Account", needs: "key", view: () => <Account /> },
  { path: "/admin/keys", title: "Keys", needs: "admin", view: () => <Keys /> },
  { path: "/admin/usage", title: "Usage", needs: "admin", view: () => <Usage /> },
  { path: "/admin/models", title: "Models", needs: "admin", view: () => <Models /> },
  { path: "/admin/queue", title: "Queue", needs: "admin", view: () => <Queue /> },
  { path: "/admin/webhooks", title: "Webhooks", needs: "admin", view: () => <Webhooks /> },
  { path: "/admin/workers", title: "Workers", needs: "admin", view: () => <Workers /> },
  { path: "/admin/audit", title: "Audit log", needs: "admin", view: () => <Audit /> },
];

function match(path: string): { page: Page; rest: string | null } | null {
  for (const page of PAGES) {
    if (path === page.path) return { page, rest: null };
    if (path.startsWith(`${page.path}/`)) return { page, rest: decodeURIComponent(path.slice(page.path.length + 1)) };
  }
  return null;
}

// The key shows its prefix, as the server lists keys; the admin token shows nothing of itself.
const KEY_PREFIX_LENGTH = 10;

function Who({ kind }: { kind: Credential }) {
  const secret = useCredential(kind);
  if (!secret) return null;
  return (
    <div class="who">
      <span class="muted small">
        {kind === "key" ? (
          <>
            Key <span class="mono">{secret.slice(0, KEY_PREFIX_LENGTH)}…</span>
          </>
        ) : (
          "Operator signed in"
        )}
      </span>
      <button type="button" class="link small" onClick={() => signOut(kind)} name={`sign-out-${kind}`}>
        Sign out
      </button>
    </div>
  );
}

function App() {
  const path = useRoute();
  const found = match(path);
  const key = useCredential("key");
  const admin = useCredential("admin");
  useEffect(() => {
    if (!found) navigate("/playground");
  }, [found]);
  useEffect(() => {
    document.title = found ? `${found.page.title} · imagegate` : "imagegate";
  }, [found?.page]);
  if (!found) return null;
  const { page, rest } = found;
  const signedIn = page.needs === "key" ? key : admin;
  const nav = (needs: Credential) =>
    PAGES.filter((p) => p.needs === needs).map((p) => (
      <Link to={p.path} class={p === page ? "active" : ""}>
        {p.title}
      </Link>
    ));
  return (
    <div class="shell">
      <nav class="sidebar">
        <div class="brand">
          <img src={`${import.meta.env.BASE_URL}favicon.svg`} alt="" width={22} height={22} />
          imagegate
        </div>
        <div class="nav-group">{nav("key")}</div>
        <div class="nav-title">Operator</div>
        <div class="nav-group">{nav("admin")}</div>
        <div class="sidebar-foot">
          <Who kind="key" />
          <Who kind="admin" />
          <a class="muted small" href="/openapi.json" target="_blank" rel="noreferrer">
            OpenAPI document
          </a>
        </div>
      </nav>
      <main class="content">
        <h1>{page.title}</h1>
        {signedIn ? page.view(rest) : <SignIn kind={page.needs} />}
      </main>
    </div>
  );
}

render(<App />, document.getElementById("app")!);

// Paths under /ui/ with the History API; the server answers index.html for every one of them.
import { useEffect, useState } from "preact/hooks";

export const BASE = "/ui";

function current(): string {
  const path = window.location.pathname;
  const inside = path.startsWith(BASE) ? path.slice(BASE.length) : path;
  return inside.replace(/\/+$/, "") || "/";
}

const listeners = new Set<() => void>();

export function navigate(path: string): void {
  window.history.pushState(null, "", BASE + path);
  listeners.forEach((notify) => notify());
}

export function useRoute(): string {
  const [path, setPath] = useState(current);
  useEffect(() => {
    const notify = () => setPath(current());
    listeners.add(notify);
    window.addEventListener("popstate", notify);
    return () => {
      listeners.delete(notify);
      window.removeEventListener("popstate", notify);
    };
  }, []);
  return path;
}

// A link that stays inside the app (a real href, so middle-click and copy still work).
export function onLinkClick(event: MouseEvent, path: string): void {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(path);
}

// Who is signed in: the API key and the admin token live in sessionStorage only (gone when the
// tab closes, never in a URL), and every view that depends on them re-renders on a change.
import { useEffect, useState } from "preact/hooks";

export type Credential = "key" | "admin";

const STORAGE: Record<Credential, string> = { key: "imagegate.apiKey", admin: "imagegate.adminToken" };
const listeners = new Set<() => void>();

export function credential(kind: Credential): string | null {
  return sessionStorage.getItem(STORAGE[kind]);
}

export function signIn(kind: Credential, value: string): void {
  sessionStorage.setItem(STORAGE[kind], value.trim());
  listeners.forEach((notify) => notify());
}

export function signOut(kind: Credential): void {
  sessionStorage.removeItem(STORAGE[kind]);
  listeners.forEach((notify) => notify());
}

export function useCredential(kind: Credential): string | null {
  const [value, setValue] = useState(() => credential(kind));
  useEffect(() => {
    const notify = () => setValue(credential(kind));
    listeners.add(notify);
    return () => void listeners.delete(notify);
  }, [kind]);
  return value;
}

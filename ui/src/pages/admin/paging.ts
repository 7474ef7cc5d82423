// Admin lists are pages of {data, next_cursor}.
import { adminApi, query } from "../../api";
import type { Page } from "../../types";

export type Params = Record<string, string | number | boolean | null | undefined | string[]>;

export function adminPage<T>(path: string, params: Params = {}) {
  return (cursor: string | null) =>
    adminApi<Page<T>>(`${path}${query({ ...params, cursor })}`).then((page) => ({ items: page.data, next: page.next_cursor }));
}

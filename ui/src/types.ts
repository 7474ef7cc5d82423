// The bodies the console reads, as the server documents them (README, /openapi.json).
import type { JsonSchema } from "./schema";
import type { RouteInfo } from "./snippets";

export type JobStatus = "QUEUED" | "PROCESSING" | "COMPLETED" | "FAILED" | "ERROR" | "CANCELED";
export const ENDED: JobStatus[] = ["COMPLETED", "FAILED", "ERROR", "CANCELED"];

// -- the user's API ---------------------------------------------------------------------------

export interface QueueOutput {
  media_url: string[];
  media_type: string | null;
  has_nsfw_concepts: boolean[];
  seed: number | null;
}

export interface QueueStatus {
  request_id: string;
  status: JobStatus;
  model_id: string;
  error: string | null;
  output: QueueOutput | null;
  progress: number;
  queue_position?: number | null;
  created_at: string | null;
  updated_at: string | null;
  completed_at: string | null;
}

export interface ProgressEvent {
  request_id: string;
  progress: number;
  step: number | null;
  steps: number | null;
  loss?: number | null;
}

export interface PriceRule {
  description: string;
  usd_for_defaults: string | null;
  per_image: boolean;
  varies: boolean;
  source: string;
}

export interface CatalogEntry {
  id: string;
  model_id: string;
  title: string;
  family: string;
  task: string;
  routes: RouteInfo[];
  inputs: Record<string, string>;
  price: PriceRule;
  request_schema: JsonSchema;
}

export interface Account {
  key_id: string;
  name: string;
  balance: string;
  currency: string;
}

export interface RequestSummary extends QueueStatus {
  cost: string;
  thumbnail: string | null;
}

export interface LedgerItem {
  id: number;
  kind: string;
  amount: string;
  request_id: string | null;
  created_at: string | null;
}

export interface Uploaded {
  url: string;
  content_type: string;
  size: number;
  expires_at: string | null;
}

export interface ItemsPage<T> {
  items: T[];
  next_cursor: string | null;
}

// -- the admin API ----------------------------------------------------------------------------

export interface Page<T> {
  data: T[];
  next_cursor: string | null;
}

export interface KeyView {
  id: string;
  name: string;
  key_prefix: string;
  balance: string;
  disabled: boolean;
  created_at: string;
}

export interface KeyDetail extends KeyView {
  webhook_secret: string;
}

export interface CreatedKey {
  api_key: string;
  key: KeyDetail;
}

export interface LedgerEntryView {
  id: number;
  kind: string;
  amount: string;
  job_id: string | null;
  created_at: string;
}

export interface UsageRow {
  day: string | null;
  key_id: string | null;
  model_id: string | null;
  requests: number;
  images: number;
  spend: string;
}

export interface UsagePage extends Page<UsageRow> {
  group_by: string[];
  since: string | null;
  until: string | null;
  totals: { requests: number; images: number; spend: string };
}

export interface ModelView {
  id: string;
  public_id: string;
  title: string;
  family: string;
  task: string;
  enabled: boolean;
  config_enabled: boolean;
  switch_enabled: boolean;
  price: string | null;
  price_source: string;
  runtime_price: string | null;
  loaded: boolean;
  loaded_on: string[];
  workers: string[];
}

export interface JobView {
  id: string;
  key_id: string;
  model_id: string;
  protocol: string;
  status: JobStatus;
  price: string;
  attempts: number;
  max_attempts: number;
  progress: number;
  cancel_requested: boolean;
  error: string | null;
  worker: string | null;
  webhook_url: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  completed_at: string | null;
}

export interface JobDetail extends JobView {
  params: Record<string, unknown>;
  progress_detail: { step?: number; steps?: number; loss?: number } | null;
  output: Record<string, unknown> | null;
  media_urls: string[];
}

export interface DeliveryView {
  event_id: string;
  request_id: string;
  key_id: string;
  target_url: string;
  event_type: string;
  state: string;
  attempts: number;
  created_at: string;
  next_attempt_at: string | null;
  deliver_until: string;
  delivered_at: string | null;
  last_status_code: number | null;
  last_error: string | null;
}

export interface WorkerView {
  id: string;
  host: string;
  pid: number;
  device: string;
  version: string;
  models: string[] | null;
  loaded: string[];
  state: string;
  live: boolean;
  heartbeat_age_seconds: number;
  current_job: string | null;
  last_error: string | null;
  started_at: string;
  heartbeat_at: string;
}

export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string | null;
  detail: Record<string, unknown> | null;
}

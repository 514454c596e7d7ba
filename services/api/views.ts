// How a record is shown: its fields in snake_case (as the routes take them), with its id,
// zone, status, version (the ETag) and times; an application's secret verifiers never.
// The fields are converted once, when the projection writes the row (api_records.view),
// and an answer is that text with the row's columns around it: a page of 1,000 records
// is assembled without parsing or re-serialising a record (that was most of a list's time).
import type { ApiAggregateType } from "./events.ts"

/** Fields a record keeps that no response shows. */
const HIDDEN: Partial<Record<ApiAggregateType, ReadonlyArray<string>>> = { application: ["secretVerifiers"] }

const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)

/** camelCase keys to snake_case, except inside free-form maps (metadata), which are the caller's own. */
const snakeKeys = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(snakeKeys)
  if (v === null || typeof v !== "object") return v
  const out: Record<string, unknown> = {}
  for (const [k, x] of Object.entries(v)) out[snake(k)] = k === "metadata" ? x : snakeKeys(x)
  return out
}

/** The shown fields of a record (api_records.view). */
export const viewFields = (type: string, record: Readonly<Record<string, unknown>>): Record<string, unknown> => {
  const hidden = HIDDEN[type as ApiAggregateType] ?? []
  return snakeKeys(Object.fromEntries(Object.entries(record).filter(([k]) => !hidden.includes(k)))) as Record<string, unknown>
}

/** The columns an answer is made of (times as ISO 8601 text, the view as JSON text). */
export interface ShownRow {
  readonly id: string
  readonly type: string
  readonly zone_id: string
  readonly version: number
  readonly status: string
  readonly view: string
  readonly created_at: string
  readonly updated_at: string
  readonly archived_at: string | null
  readonly archive_reason: string | null
  /** Zones only: "active" once the sts's signing key for the zone is active, else "pending". */
  readonly key_status: string | null
}

const q = JSON.stringify

/**
 * One record's answer as JSON text, in two parts: the body (all but a zone's key status,
 * which changes without a new version, and the closing brace) is fixed at a version; the
 * end adds the key status of a zone.
 */
export const answerBody = (r: ShownRow): string => {
  const fields = r.view.length > 2 ? `,${r.view.slice(1, -1)}` : ""
  const zone = r.type === "zone" ? "" : `,"zone_id":${q(r.zone_id)}`
  const ended = r.archived_at === null ? "" : `,"archived_at":${q(r.archived_at)},"archive_reason":${q(r.archive_reason)}`
  return `{"id":${q(r.id)}${zone}${fields},"status":${q(r.status)},"version":${r.version},"created_at":${q(r.created_at)},"updated_at":${q(r.updated_at)}${ended}`
}
export const answerEnd = (keyStatus: string | null): string => (keyStatus === null ? "}" : `,"key_status":${q(keyStatus)}}`)
export const shownJson = (r: ShownRow): string => answerBody(r) + answerEnd(r.key_status)

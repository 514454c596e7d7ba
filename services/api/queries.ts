// Reads of the api's tables, and how a record is shown: its fields in snake_case (as the
// routes take them), with its id, zone, status, version (the ETag) and times. An
// application's secret verifiers are never shown.
import { type Kysely, sql } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { ApiAggregateType } from "./events.ts"

export interface RecordRow {
  readonly id: string
  readonly type: ApiAggregateType
  readonly zone_id: string
  readonly version: number
  readonly status: "active" | "archived"
  readonly record: Record<string, unknown>
  /** ISO 8601, UTC, milliseconds. */
  readonly created_at: string
  readonly updated_at: string
  readonly archived_at: string | null
  readonly archive_reason: string | null
}

export type View = Record<string, unknown>

// record keys are few and fixed: each is converted once (a list of 1,000 records spent most of its time here)
const snakeNames = new Map<string, string>()
const snake = (k: string) => {
  let s = snakeNames.get(k)
  if (s === undefined) {
    s = k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)
    if (snakeNames.size < 10_000) snakeNames.set(k, s)
  }
  return s
}

/** camelCase keys to snake_case, except inside free-form maps (metadata), which are the caller's own. */
const snakeKeys = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(snakeKeys)
  if (v === null || typeof v !== "object") return v
  const out: Record<string, unknown> = {}
  for (const k in v) {
    const x = (v as Record<string, unknown>)[k]
    out[snake(k)] = k === "metadata" ? x : snakeKeys(x)
  }
  return out
}

/** Fields a record keeps that no response shows. */
const HIDDEN: Partial<Record<ApiAggregateType, ReadonlyArray<string>>> = { application: ["secretVerifiers"] }

export const viewOf = (row: RecordRow): View => {
  const hidden = HIDDEN[row.type]
  const view: View = { id: row.id }
  if (row.type !== "zone") view.zone_id = row.zone_id
  for (const k in row.record) {
    if (hidden?.includes(k)) continue
    view[snake(k)] = k === "metadata" ? row.record[k] : snakeKeys(row.record[k])
  }
  view.status = row.status
  view.version = row.version
  view.created_at = row.created_at
  view.updated_at = row.updated_at
  if (row.archived_at !== null) {
    view.archived_at = row.archived_at
    view.archive_reason = row.archive_reason
  }
  return view
}

// times as ISO 8601 text made by Postgres: parsing 3,000 Dates per page cost more than the query
const COLUMNS = sql`id, type, zone_id, version, status, record,
  to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as created_at,
  to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as updated_at,
  to_char(archived_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as archived_at,
  archive_reason`

export interface ListOptions {
  /** The last id of the previous page. */
  readonly after: string | undefined
  readonly limit: number
  readonly status: "active" | "archived" | undefined
  /** Record fields (camelCase) that must equal these values. */
  readonly where: Readonly<Record<string, string>>
}

export const makeQueries = (db: Kysely<Tables>) => {
  const one = async (type: ApiAggregateType, zoneId: string, id: string): Promise<RecordRow | undefined> => {
    const { rows } = await sql<RecordRow>`select ${COLUMNS} from api_records where id = ${id} and type = ${type} and zone_id = ${zoneId}`.execute(db)
    return rows[0]
  }
  return {
    one,
    /** A live record, or undefined (missing or archived). */
    live: async (type: ApiAggregateType, zoneId: string, id: string) => {
      const row = await one(type, zoneId, id)
      return row?.status === "active" ? row : undefined
    },
    list: async (type: ApiAggregateType, zoneId: string | undefined, o: ListOptions): Promise<ReadonlyArray<RecordRow>> => {
      const conditions = [
        sql`type = ${type}`,
        ...(zoneId === undefined ? [] : [sql`zone_id = ${zoneId}`]),
        ...(o.after === undefined ? [] : [sql`id > ${o.after}`]),
        ...(o.status === undefined ? [] : [sql`status = ${o.status}`]),
        ...Object.entries(o.where).map(([field, value]) => sql`record->>${field} = ${value}`)
      ]
      const { rows } = await sql<RecordRow>`select ${COLUMNS} from api_records where ${sql.join(conditions, sql` and `)}
        order by id limit ${o.limit}`.execute(db)
      return rows
    },
    /** The id a POST's Idempotency-Key created before, if any (checked before calling out to the sts). */
    priorAnswer: async (c: { idempotencyScope?: string | undefined; idempotencyKey?: string | undefined }) => {
      if (c.idempotencyKey === undefined || c.idempotencyScope === undefined) return undefined
      const { rows } = await sql<{ id: string }>`select result->>'id' as id from command_results
        where scope = ${c.idempotencyScope} and idempotency_key = ${c.idempotencyKey}`.execute(db)
      return rows[0]?.id ?? undefined
    },
    zoneBySlug: async (slug: string) => {
      const { rows } = await sql<RecordRow>`select ${COLUMNS} from api_records
        where type = 'zone' and status = 'active' and record->>'slug' = ${slug}`.execute(db)
      return rows[0]
    },
    versionTexts: async (ids: ReadonlyArray<string>) => {
      if (ids.length === 0) return []
      const { rows } = await sql<{ id: string; policy_id: string; rego: string }>`select id, policy_id, rego from api_policy_versions
        where id in (${sql.join(ids)})`.execute(db)
      return rows
    }
  }
}

export type Queries = ReturnType<typeof makeQueries>

// The api's tables as a projection of its own events. Commands write it inline (in the
// statement, or the group, that appends the events); `caracal projections rebuild api`
// replays the log through the same function, so the rebuilt tables equal the live ones.
// Every event but an end carries the whole record, so each event is applied on its own.
import { sql, type Transaction } from "kysely"
import { createHash } from "node:crypto"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
import { changeSql, foldChanges, type RowChange } from "../../core/row-changes.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { recordOf } from "./domain/record.ts"
import { viewFields } from "./views.ts"
import { type ApiAggregateType, apiAggregates, apiEvents } from "./events.ts"

/** What the projection needs of an event, whether being written now or replayed. */
export interface Projected {
  readonly type: string
  readonly aggregateType: string
  readonly aggregateId: string
  readonly zoneId: string
  readonly sequence: number
  readonly occurredAt: string
  readonly data: unknown
}

const ENDS = new Set<string>(Object.values(apiAggregates).map((a) => a.ended))
const CREATES = new Set(Object.values(apiAggregates).map((a) => `${a.prefix}Created`))

export const changesFor = (e: Projected): ReadonlyArray<RowChange> => {
  const key = ["id", e.aggregateId] as const
  const at = sql`${e.occurredAt}::timestamptz`
  const version = sql`${e.sequence}::int`
  if (CREATES.has(e.type)) {
    return [{
      table: "api_records",
      key,
      op: "insert",
      values: {
        type: sql`${e.aggregateType}`,
        zone_id: sql`${e.zoneId}`,
        version,
        status: sql`'active'`,
        record: sql`${JSON.stringify(e.data)}::jsonb`,
        view: sql`${JSON.stringify(viewFields(e.aggregateType, e.data as Record<string, unknown>))}::jsonb`,
        created_at: at,
        updated_at: at
      }
    }]
  }
  if (ENDS.has(e.type)) {
    const { reason } = e.data as { reason: string }
    return [{
      table: "api_records",
      key,
      op: "update",
      values: { version, status: sql`'archived'`, updated_at: at, archived_at: at, archive_reason: sql`${reason}` }
    }]
  }
  const update: RowChange = {
    table: "api_records",
    key,
    op: "update",
    values: {
      version,
      record: sql`${JSON.stringify(recordOf(e))}::jsonb`,
      view: sql`${JSON.stringify(viewFields(e.aggregateType, recordOf(e)))}::jsonb`,
      updated_at: at
    }
  }
  if (e.type !== "PolicyVersionAdded") return [update]
  const d = e.data as { versionId: string; rego: string; record: { versions: ReadonlyArray<{ id: string; number: number }> } }
  const number = d.record.versions.find((v) => v.id === d.versionId)?.number ?? d.record.versions.length
  return [update, {
    table: "api_policy_versions",
    key: ["id", d.versionId],
    op: "insert",
    values: {
      policy_id: sql`${e.aggregateId}`,
      zone_id: sql`${e.zoneId}`,
      number: sql`${number}::int`,
      rego: sql`${d.rego}`,
      sha256: sql`${createHash("sha256").update(d.rego).digest("hex")}`,
      created_at: at
    }
  }]
}

const projectedOf = (e: Envelope): Projected => ({
  type: e.type,
  aggregateType: e.aggregate.type,
  aggregateId: e.aggregate.id,
  zoneId: e.zoneId,
  sequence: e.sequence,
  occurredAt: e.occurredAt,
  data: e.data
})

export const applyApiEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  for (const change of foldChanges(events.flatMap((e) => changesFor(projectedOf(e))))) await changeSql(change).execute(trx)
}

export const apiProjection: PgProjection = {
  name: "api",
  handles: new Set(apiEvents.map((e) => e.type)),
  apply: (trx, e) => applyApiEvents(trx, [e]),
  applyBatch: applyApiEvents,
  tables: ["api_policy_versions", "api_records"],
  reset: async (trx) => {
    await sql`delete from api_policy_versions`.execute(trx)
    await sql`delete from api_records`.execute(trx)
  }
}

export const isApiAggregate = (t: string): t is ApiAggregateType => t in apiAggregates

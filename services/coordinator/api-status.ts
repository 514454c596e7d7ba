// The api's zones and applications as the coordinator sees them: active or archived. A
// Postgres projection of the api's events (services/api/events.ts), shared by every replica
// through a consumer group on the zone and application streams (group mode: the work is
// shared, the table is one), and rebuilt by `caracal projections rebuild coordinator-principals`.
//
// A spawn reads it inside its write statement (coordinator_require_active, see
// migrations/0012_known_principals.ts): an archived zone answers 403 zone_inactive, an
// archived application 403 application_inactive. A zone or application the projection has
// not seen yet is answered from the log there (read-your-writes), so an archive refuses at
// once, whether or not it has reached this consumer. The window that remains: a row still
// `active` whose archive is written but not yet projected (the relay's and the consumer's
// delay, well under a second when they run).
import { sql, type Transaction } from "kysely"
import type { ConsumerDefinition } from "../../core/consumer-layer.ts"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { events as apiEvents } from "../api/events.ts"

export const PRINCIPALS = "coordinator-principals"
export const PRINCIPALS_TABLE = "coordinator_known_principals"

/** The events that make or keep a zone or application active, and those that archive it. */
const ACTIVE = ["ZoneCreated", "ZoneUpdated", "ApplicationCreated", "ApplicationUpdated", "ApplicationSecretRotated"]
const ARCHIVED = ["ZoneArchived", "ApplicationArchived"]

interface Row {
  readonly kind: string
  readonly id: string
  readonly zoneId: string
  readonly archived: boolean
  readonly updatedAt: string
}

/**
 * Applies events in order, each row written once: the batch is folded per (kind, id) and
 * written in one upsert. Archived is final, here and in the upsert: nothing after an archive
 * makes a zone or application active again (fail closed, as the log check reads it).
 */
export const applyPrincipalEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  const rows = new Map<string, Row>()
  for (const e of events) {
    const key = `${e.aggregate.type}\u0000${e.aggregate.id}`
    const before = rows.get(key)
    rows.set(key, {
      kind: e.aggregate.type,
      id: e.aggregate.id,
      // a zone's envelope carries its own id
      zoneId: e.zoneId,
      archived: (before?.archived ?? false) || ARCHIVED.includes(e.type),
      updatedAt: e.occurredAt
    })
  }
  if (rows.size === 0) return
  const all = [...rows.values()]
  await sql`insert into coordinator_known_principals (kind, id, zone_id, status, updated_at)
    select * from unnest(${all.map((r) => r.kind)}::text[], ${all.map((r) => r.id)}::text[], ${all.map((r) => r.zoneId)}::text[],
      ${all.map((r) => (r.archived ? "archived" : "active"))}::text[], ${all.map((r) => r.updatedAt)}::timestamptz[])
    on conflict (kind, id) do update set
      zone_id = excluded.zone_id,
      status = case when coordinator_known_principals.status = 'archived' then 'archived' else excluded.status end,
      updated_at = excluded.updated_at`.execute(trx)
}

export const principalsProjection: PgProjection = {
  name: PRINCIPALS,
  handles: new Set([...ACTIVE, ...ARCHIVED]),
  apply: (trx, e) => applyPrincipalEvents(trx, [e]),
  applyBatch: applyPrincipalEvents,
  // no command writes it, but the consumer does: a rebuild holds the consumer off until it commits
  tables: [PRINCIPALS_TABLE],
  reset: async (trx) => {
    await sql`delete from coordinator_known_principals`.execute(trx)
  }
}

/** The consumer that keeps it: a group on the api's zone and application streams. */
export const principalsConsumer: ConsumerDefinition = {
  mode: "group",
  name: PRINCIPALS,
  streams: (keys) => [keys.stream("zone"), keys.stream("application")],
  registry: apiEvents,
  projection: principalsProjection
}

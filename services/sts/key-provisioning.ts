// Which zones still need their first signing key. The api publishes ZoneCreated on
// caracal:{zone}:events; a consumer group shared by the sts replicas (`sts-zones`) records
// each zone in sts_zone_key_provisioning, inside the consumer's transaction, and the key
// ticker (keys.ts) provisions the pending ones through the producer — a command cannot run
// inside a projection's transaction (it has its own statement or group), so the projection
// only notes the work and the command is idempotent (ProvisionKey on a ring with keys is a
// no-op), whichever replica or retry runs it.
//
// Nobody waits for this path: the JWKS route and signingKeyOrProvision provision on demand
// when the zone is in the log (read-your-writes). This one makes keys exist before anyone asks.
import { type Kysely, sql, type Transaction } from "kysely"
import type { ConsumerDefinition } from "../../core/consumer-layer.ts"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { events as apiEvents } from "../api/events.ts"

export const ZONES_PROJECTION = "sts-zones"
export const PROVISIONING_TABLE = "sts_zone_key_provisioning"

/**
 * Folds a batch per zone and upserts each once. Archived is final. A zone whose keys exist
 * already (a rebuild of this table) is recorded as provisioned, so it is not asked again.
 */
export const applyZoneEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  const zones = new Map<string, { archived: boolean; at: string }>()
  for (const e of events) {
    const before = zones.get(e.aggregate.id)
    zones.set(e.aggregate.id, { archived: (before?.archived ?? false) || e.type === "ZoneArchived", at: e.occurredAt })
  }
  if (zones.size === 0) return
  const ids = [...zones.keys()]
  const all = [...zones.values()]
  await sql`insert into sts_zone_key_provisioning (zone_id, archived, provisioned_at, updated_at)
    select z.id, z.archived, (select min(k.created_at) from sts_zone_keys k where k.zone_id = z.id), z.at
    from unnest(${ids}::text[], ${all.map((z) => z.archived)}::boolean[], ${all.map((z) => z.at)}::timestamptz[]) as z(id, archived, at)
    on conflict (zone_id) do update set
      archived = sts_zone_key_provisioning.archived or excluded.archived,
      updated_at = excluded.updated_at`.execute(trx)
}

export const zonesProjection: PgProjection = {
  name: ZONES_PROJECTION,
  handles: new Set(["ZoneCreated", "ZoneArchived"]),
  apply: (trx, e) => applyZoneEvents(trx, [e]),
  applyBatch: applyZoneEvents,
  tables: [PROVISIONING_TABLE],
  reset: async (trx) => {
    await sql`delete from sts_zone_key_provisioning`.execute(trx)
  }
}

/** The consumer: a group on the api's zone stream, shared by the replicas. */
export const zonesConsumer: ConsumerDefinition = {
  mode: "group",
  name: ZONES_PROJECTION,
  streams: (keys) => [keys.stream("zone")],
  registry: apiEvents,
  projection: zonesProjection
}

/** Zones noted but not provisioned yet (partial index), oldest first. */
export const pendingZones = async (db: Kysely<Tables>, limit: number): Promise<ReadonlyArray<string>> => {
  const { rows } = await sql<{ zone_id: string }>`
    select zone_id from sts_zone_key_provisioning where provisioned_at is null and not archived
    order by updated_at limit ${limit}`.execute(db)
  return rows.map((r) => r.zone_id)
}

export const markProvisioned = (db: Kysely<Tables>, zoneId: string) =>
  sql`update sts_zone_key_provisioning set provisioned_at = now() where zone_id = ${zoneId} and provisioned_at is null`.execute(db)

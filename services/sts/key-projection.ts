// sts_zone_keys as a projection of the key ring's events: public material and lifecycle
// times only. The key commands write it inline (in the statement that appends the events);
// `rebuildPostgres(db, events, zoneKeysProjection)` replays the log through the same function.
//
// The sealed private keys (sts_zone_key_secrets) are not part of it: they are primary state,
// written by the command that creates a key and found in no event, so a rebuild never resets
// them (they are neither in `tables` nor in `reset`).
import { sql, type Transaction } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
import { changeSql, foldChanges, type RowChange } from "../../core/row-changes.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import type { KeyRingEvent } from "./key-ring.ts"

export const ZONE_KEYS_TABLE = "sts_zone_keys"

type Data<T extends KeyRingEvent["type"]> = Extract<KeyRingEvent, { type: T }>["data"]

/** What a statement needs of an event, whether it is being written now or replayed from the log. */
export interface ProjectedKeyEvent {
  readonly type: string
  readonly zoneId: string
  readonly occurredAt: string
  readonly data: unknown
}

/** One key's row change for one event (the kid is the row's key). */
export const keyChangesFor = (e: ProjectedKeyEvent): ReadonlyArray<RowChange> => {
  const row = (kid: string, op: RowChange["op"], values: RowChange["values"]): ReadonlyArray<RowChange> => [
    { table: ZONE_KEYS_TABLE, key: ["kid", kid], op, values }
  ]
  switch (e.type) {
    case "ZoneKeyCreated": {
      const d = e.data as Data<"ZoneKeyCreated">
      return row(d.kid, "insert", {
        zone_id: sql`${e.zoneId}`,
        status: sql`${d.status}`,
        public_jwk: sql`${JSON.stringify(d.publicJwk)}::jsonb`,
        activates_at: sql`${d.activatesAt}::timestamptz`,
        remove_at: sql`null::timestamptz`,
        due_at: d.status === "next" ? sql`${d.activatesAt}::timestamptz` : sql`null::timestamptz`,
        created_at: sql`${e.occurredAt}::timestamptz`
      })
    }
    case "ZoneKeyActivated": {
      const d = e.data as Data<"ZoneKeyActivated">
      return row(d.kid, "update", { status: sql`'active'`, due_at: sql`null::timestamptz` })
    }
    case "ZoneKeyRetired": {
      const d = e.data as Data<"ZoneKeyRetired">
      return row(d.kid, "update", {
        status: sql`'retired'`,
        remove_at: sql`${d.removeAt}::timestamptz`,
        due_at: sql`${d.removeAt}::timestamptz`
      })
    }
    case "ZoneKeyRemoved": {
      const d = e.data as Data<"ZoneKeyRemoved">
      return row(d.kid, "update", { status: sql`'removed'`, due_at: sql`null::timestamptz` })
    }
    default:
      return []
  }
}

export const applyKeyEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  const changes = events.flatMap((e) => keyChangesFor({ type: e.type, zoneId: e.zoneId, occurredAt: e.occurredAt, data: e.data }))
  for (const change of foldChanges(changes)) await changeSql(change).execute(trx)
}

export const zoneKeysProjection: PgProjection = {
  name: "sts-zone-keys",
  handles: new Set(["ZoneKeyCreated", "ZoneKeyActivated", "ZoneKeyRetired", "ZoneKeyRemoved"]),
  apply: (trx, e) => applyKeyEvents(trx, [e]),
  applyBatch: applyKeyEvents,
  // a rebuild holds the key commands off (they write this table inline); never the secrets
  tables: [ZONE_KEYS_TABLE],
  reset: async (trx) => {
    await sql`delete from sts_zone_keys`.execute(trx)
  }
}

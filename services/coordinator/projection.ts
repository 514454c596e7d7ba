// The coordinator's tables as a projection of its own events. The command handlers apply
// it inline (in the statement that appends the events); `caracal projections rebuild
// coordinator` replays the log through the same function, so the rebuilt tables equal the live ones.
import { sql, type Transaction } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
import { changeSql, foldChanges, type RowChange } from "../../core/row-changes.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import type { DelegationEvent } from "./domain/delegation.ts"
import type { SessionEvent } from "./domain/session.ts"

type Data<E extends { type: string; data: unknown }, T extends E["type"]> = Extract<E, { type: T }>["data"]

/** What a statement needs of an event, whether it is being written now or replayed from the log. */
export interface Projected {
  readonly type: string
  readonly zoneId: string
  readonly aggregateId: string
  readonly occurredAt: string
  readonly data: unknown
}

/**
 * What an event does to the tables, as row changes. The command handlers fold a command's
 * changes and write each row once inside the statement that appends the events (so a
 * command is one round trip, whatever the number of its events); the rebuild folds a batch
 * of the log the same way: both paths share this function, so they cannot drift apart.
 */
export const changesFor = (e: Projected): ReadonlyArray<RowChange> => {
  const key = ["id", e.aggregateId] as const
  const at = sql`${e.occurredAt}::timestamptz`
  const session = (op: RowChange["op"], values: RowChange["values"]): ReadonlyArray<RowChange> => [{ table: "agent_sessions", key, op, values }]
  const edge = (op: RowChange["op"], values: RowChange["values"]): ReadonlyArray<RowChange> => [{ table: "delegation_edges", key, op, values }]
  switch (e.type) {
    case "AgentSpawned": {
      const d = e.data as Data<SessionEvent, "AgentSpawned">
      return session("insert", {
        zone_id: sql`${e.zoneId}`,
        application_id: sql`${d.applicationId}`,
        parent_id: sql`${d.parentId}`,
        root_id: sql`${d.rootId}`,
        depth: sql`${d.depth}::int`,
        kind: sql`${d.kind}`,
        status: sql`'active'`,
        suspended_by_cascade: sql`false`,
        ttl_seconds: sql`${d.ttlSeconds}::int`,
        metadata: sql`${JSON.stringify(d.metadata)}::jsonb`,
        created_at: at,
        expires_at: sql`${d.expiresAt}::timestamptz`
      })
    }
    case "AgentSuspended": {
      const d = e.data as Data<SessionEvent, "AgentSuspended">
      return session("update", { status: sql`'suspended'`, suspended_by_cascade: sql`${d.cascade}::boolean` })
    }
    case "AgentResumed":
      return session("update", { status: sql`'active'`, suspended_by_cascade: sql`false` })
    case "AgentTerminated": {
      const d = e.data as Data<SessionEvent, "AgentTerminated">
      return session("update", {
        status: sql`'terminated'`,
        suspended_by_cascade: sql`false`,
        ended_at: at,
        end_reason: sql`${d.reason}`,
        end_cause_id: sql`${d.causeId}`
      })
    }
    case "DelegationCreated": {
      const d = e.data as Data<DelegationEvent, "DelegationCreated">
      return edge("insert", {
        zone_id: sql`${e.zoneId}`,
        issuer_application_id: sql`${d.issuerApplicationId}`,
        receiver_application_id: sql`${d.receiverApplicationId}`,
        source_session_id: sql`${d.sourceSessionId}`,
        target_session_id: sql`${d.targetSessionId}`,
        scopes: sql`${[...d.scopes]}::text[]`,
        constraints: sql`${JSON.stringify(d.constraints)}::jsonb`,
        parent_edge_id: sql`${d.parentEdgeId}`,
        status: sql`'active'`,
        created_at: at,
        expires_at: sql`${d.expiresAt}::timestamptz`
      })
    }
    case "DelegationRevoked": {
      const d = e.data as Data<DelegationEvent, "DelegationRevoked">
      return edge("update", { status: sql`'revoked'`, revoked_at: at, revoke_reason: sql`${d.reason}`, revoke_cause_id: sql`${d.causeId}` })
    }
    default:
      return []
  }
}

const projectedOf = (e: Envelope): Projected => ({
  type: e.type,
  zoneId: e.zoneId,
  aggregateId: e.aggregate.id,
  occurredAt: e.occurredAt,
  data: e.data
})

/** Applies events in order, each row written once. */
export const applyCoordinatorEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  for (const change of foldChanges(events.flatMap((e) => changesFor(projectedOf(e))))) await changeSql(change).execute(trx)
}

export const COORDINATOR_EVENTS = new Set([
  "AgentSpawned",
  "AgentSuspended",
  "AgentResumed",
  "AgentTerminated",
  "DelegationCreated",
  "DelegationRevoked"
])

export const coordinatorProjection: PgProjection = {
  name: "coordinator",
  handles: COORDINATOR_EVENTS,
  apply: (trx, e) => applyCoordinatorEvents(trx, [e]),
  applyBatch: applyCoordinatorEvents,
  // a rebuild holds these against the command handlers, which change them inline
  tables: ["agent_sessions", "delegation_edges", "session_counts"],
  reset: async (trx) => {
    await sql`delete from delegation_edges`.execute(trx)
    await sql`delete from agent_sessions`.execute(trx)
    await sql`delete from session_counts`.execute(trx)
  },
  // the live counters the spawns reserve against, derived from the rebuilt sessions
  afterRebuild: async (trx) => {
    await sql`delete from session_counts`.execute(trx)
    await sql`insert into session_counts (scope, live)
      select 'zone:' || zone_id, count(*) from agent_sessions where status <> 'terminated' group by zone_id
      union all
      select 'app:' || zone_id || ':' || application_id, count(*) from agent_sessions where status <> 'terminated' group by zone_id, application_id
      union all
      select 'parent:' || parent_id, count(*) from agent_sessions where status <> 'terminated' and parent_id is not null group by parent_id`.execute(trx)
  }
}

// The coordinator's tables as a projection of its own events. The command handlers apply
// it inline (in the statement that appends the events); `caracal projections rebuild
// coordinator` replays the log through the same function, so the rebuilt tables equal the live ones.
import { type RawBuilder, sql, type Transaction } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { PgProjection } from "../../core/projection.ts"
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
 * The one statement an event makes on the tables. The command handlers run it inside the
 * statement that appends the event (so a command is one round trip), the rebuild runs it
 * per replayed event: both paths share this function, so they cannot drift apart.
 */
export const statementFor = (e: Projected): RawBuilder<unknown> | undefined => {
  const id = e.aggregateId
  const at = e.occurredAt
  switch (e.type) {
    case "AgentSpawned": {
      const d = e.data as Data<SessionEvent, "AgentSpawned">
      return sql`insert into agent_sessions (id, zone_id, application_id, parent_id, root_id, depth, kind, status, ttl_seconds, metadata, created_at, expires_at)
        values (${id}, ${e.zoneId}, ${d.applicationId}, ${d.parentId}, ${d.rootId}, ${d.depth}, ${d.kind}, 'active', ${d.ttlSeconds},
          ${JSON.stringify(d.metadata)}::jsonb, ${at}::timestamptz, ${d.expiresAt}::timestamptz)`
    }
    case "AgentSuspended": {
      const d = e.data as Data<SessionEvent, "AgentSuspended">
      return sql`update agent_sessions set status = 'suspended', suspended_by_cascade = ${d.cascade} where id = ${id}`
    }
    case "AgentResumed":
      return sql`update agent_sessions set status = 'active', suspended_by_cascade = false where id = ${id}`
    case "AgentTerminated": {
      const d = e.data as Data<SessionEvent, "AgentTerminated">
      return sql`update agent_sessions set status = 'terminated', suspended_by_cascade = false, ended_at = ${at}::timestamptz,
        end_reason = ${d.reason}, end_cause_id = ${d.causeId} where id = ${id}`
    }
    case "DelegationCreated": {
      const d = e.data as Data<DelegationEvent, "DelegationCreated">
      return sql`insert into delegation_edges (id, zone_id, issuer_application_id, receiver_application_id, source_session_id,
          target_session_id, scopes, constraints, parent_edge_id, status, created_at, expires_at)
        values (${id}, ${e.zoneId}, ${d.issuerApplicationId}, ${d.receiverApplicationId}, ${d.sourceSessionId}, ${d.targetSessionId},
          ${[...d.scopes]}::text[], ${JSON.stringify(d.constraints)}::jsonb, ${d.parentEdgeId}, 'active', ${at}::timestamptz, ${d.expiresAt}::timestamptz)`
    }
    case "DelegationRevoked": {
      const d = e.data as Data<DelegationEvent, "DelegationRevoked">
      return sql`update delegation_edges set status = 'revoked', revoked_at = ${at}::timestamptz, revoke_reason = ${d.reason},
        revoke_cause_id = ${d.causeId} where id = ${id}`
    }
    default:
      return undefined
  }
}

export const applyCoordinatorEvent = async (trx: Transaction<Tables>, e: Envelope): Promise<void> => {
  const statement = statementFor({ type: e.type, zoneId: e.zoneId, aggregateId: e.aggregate.id, occurredAt: e.occurredAt, data: e.data })
  if (statement) await statement.execute(trx)
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
  apply: applyCoordinatorEvent,
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

// Reads of the coordinator's tables, shaped as the HTTP API returns them (snake_case, ISO times).
// Every read is an Effect that fails with DbError when Postgres does not answer, which the
// HTTP layer turns into 503 temporarily_unavailable (core/http/errors.ts) rather than a 500.
import { type Kysely, sql } from "kysely"
import { makeDatabase } from "../../core/db/database.ts"
import type { Tables } from "../../core/db/tables.ts"

export interface SessionView {
  readonly id: string
  readonly zone_id: string
  readonly application_id: string
  readonly parent_id: string | null
  readonly root_id: string
  readonly depth: number
  readonly kind: string
  readonly status: string
  readonly suspended_by_cascade: boolean
  readonly ttl_seconds: number
  readonly metadata: unknown
  readonly created_at: string
  readonly expires_at: string
  readonly ended_at: string | null
  readonly end_reason: string | null
  readonly end_cause_id: string | null
}

export interface DelegationView {
  readonly id: string
  readonly zone_id: string
  readonly issuer_application_id: string
  readonly receiver_application_id: string
  readonly source_session_id: string
  readonly target_session_id: string
  readonly scopes: ReadonlyArray<string>
  readonly constraints: Record<string, unknown>
  readonly parent_edge_id: string | null
  readonly status: string
  readonly created_at: string
  readonly expires_at: string
  readonly revoked_at: string | null
  readonly revoke_reason: string | null
}

const iso = (c: string) => sql.raw(`to_char(${c} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`)

const SESSION = sql`s.id, s.zone_id, s.application_id, s.parent_id, s.root_id, s.depth, s.kind, s.status, s.suspended_by_cascade,
  s.ttl_seconds, s.metadata, ${iso("s.created_at")} as created_at, ${iso("s.expires_at")} as expires_at,
  ${iso("s.ended_at")} as ended_at, s.end_reason, s.end_cause_id`

const EDGE = sql`e.id, e.zone_id, e.issuer_application_id, e.receiver_application_id, e.source_session_id, e.target_session_id,
  e.scopes, e.constraints, e.parent_edge_id, e.status, ${iso("e.created_at")} as created_at, ${iso("e.expires_at")} as expires_at,
  ${iso("e.revoked_at")} as revoked_at, e.revoke_reason`

/** The wire form of constraints: snake_case, as clients send them. */
const edgeView = (r: DelegationView & { constraints: Record<string, unknown> }): DelegationView => {
  const c = r.constraints
  return {
    ...r,
    constraints: {
      ...(c.resources ? { resources: c.resources } : {}),
      ...(c.actions ? { actions: c.actions } : {}),
      ...(c.maxHops === undefined ? {} : { max_hops: c.maxHops }),
      ...(c.expiresAt ? { expires_at: c.expiresAt } : {})
    }
  }
}

const reads = (db: Kysely<Tables>) => ({
  session: async (zoneId: string, id: string): Promise<SessionView | undefined> =>
    (await sql<SessionView>`select ${SESSION} from agent_sessions s where s.zone_id = ${zoneId} and s.id = ${id}`.execute(db)).rows[0],

  /** Newest first; the cursor is the last (created_at, id) seen, opaque to clients. */
  sessions: async (zoneId: string, opts: {
    readonly applicationIds: ReadonlyArray<string> | undefined
    readonly status: string | undefined
    readonly after: { readonly createdAt: string; readonly id: string } | undefined
    readonly limit: number
  }): Promise<ReadonlyArray<SessionView>> =>
    (await sql<SessionView>`select ${SESSION} from agent_sessions s
      where s.zone_id = ${zoneId}
        and ${opts.applicationIds === undefined ? sql`true` : sql`s.application_id = any(${[...opts.applicationIds]}::text[])`}
        and ${opts.status === undefined ? sql`true` : sql`s.status = ${opts.status}`}
        and ${opts.after === undefined ? sql`true` : sql`(s.created_at, s.id) < (${opts.after.createdAt}::timestamptz, ${opts.after.id})`}
      order by s.created_at desc, s.id desc limit ${opts.limit}`.execute(db)).rows,

  children: async (zoneId: string, id: string): Promise<ReadonlyArray<SessionView>> =>
    (await sql<SessionView>`select ${SESSION} from agent_sessions s where s.zone_id = ${zoneId} and s.parent_id = ${id}
      order by s.created_at, s.id`.execute(db)).rows,

  /** The subtree under a session (itself included), depth first by creation. */
  tree: async (zoneId: string, id: string): Promise<ReadonlyArray<SessionView>> =>
    (await sql<SessionView>`with recursive t(id) as (
        select id from agent_sessions where zone_id = ${zoneId} and id = ${id}
        union all
        select c.id from agent_sessions c join t on c.parent_id = t.id
      )
      select ${SESSION} from agent_sessions s join t using (id) order by s.depth, s.created_at, s.id`.execute(db)).rows,

  delegation: async (zoneId: string, id: string): Promise<DelegationView | undefined> => {
    const r = (await sql<DelegationView>`select ${EDGE} from delegation_edges e where e.zone_id = ${zoneId} and e.id = ${id}`.execute(db)).rows[0]
    return r ? edgeView(r as DelegationView & { constraints: Record<string, unknown> }) : undefined
  },

  delegationsOf: async (zoneId: string, sessionId: string, direction: "inbound" | "outbound"): Promise<ReadonlyArray<DelegationView>> => {
    const column = sql.ref(direction === "inbound" ? "e.target_session_id" : "e.source_session_id")
    const { rows } = await sql<DelegationView>`select ${EDGE} from delegation_edges e where e.zone_id = ${zoneId} and ${column} = ${sessionId}
      order by e.created_at, e.id`.execute(db)
    return rows.map((r) => edgeView(r as DelegationView & { constraints: Record<string, unknown> }))
  },

  /** The edge and every edge downstream of it (narrowed from it, transitively). */
  traverse: async (zoneId: string, id: string): Promise<ReadonlyArray<DelegationView & { readonly hop: number }>> => {
    const { rows } = await sql<DelegationView & { hop: number }>`with recursive t(id, hop) as (
        select id, 0 from delegation_edges where zone_id = ${zoneId} and id = ${id}
        union all
        select e.id, t.hop + 1 from delegation_edges e join t on e.parent_edge_id = t.id
      )
      select ${EDGE}, t.hop from delegation_edges e join t using (id) order by t.hop, e.created_at, e.id`.execute(db)
    return rows.map((r) => ({ ...edgeView(r as DelegationView & { constraints: Record<string, unknown> }), hop: r.hop }))
  }
})

/** The reads as Effects: the one place where a read's database failure becomes a DbError. */
export const makeQueries = (db: Kysely<Tables>) => {
  const { query } = makeDatabase(db)
  const r = reads(db)
  return {
    session: (...a: Parameters<typeof r.session>) => query(() => r.session(...a)),
    sessions: (...a: Parameters<typeof r.sessions>) => query(() => r.sessions(...a)),
    children: (...a: Parameters<typeof r.children>) => query(() => r.children(...a)),
    tree: (...a: Parameters<typeof r.tree>) => query(() => r.tree(...a)),
    delegation: (...a: Parameters<typeof r.delegation>) => query(() => r.delegation(...a)),
    delegationsOf: (...a: Parameters<typeof r.delegationsOf>) => query(() => r.delegationsOf(...a)),
    traverse: (...a: Parameters<typeof r.traverse>) => query(() => r.traverse(...a))
  }
}

export type Queries = ReturnType<typeof makeQueries>

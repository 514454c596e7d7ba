// The coordinator's state as the token endpoint checks it: an agent session and a
// delegation edge with the path above it. Read from the coordinator's own tables — its
// projection of its events, written in the statement that appends them — so a session
// terminated or an edge revoked a moment ago is refused at once, on every replica.
import { type Kysely, sql } from "kysely"
import type { Tables } from "../../core/db/tables.ts"

export interface SessionFacts {
  readonly id: string
  readonly applicationId: string
  readonly status: "active" | "suspended" | "terminated"
  readonly expiresAt: Date
}

export interface EdgeFacts {
  readonly id: string
  readonly issuerApplicationId: string
  readonly receiverApplicationId: string
  readonly sourceSessionId: string
  readonly targetSessionId: string
  readonly scopes: ReadonlyArray<string>
  readonly constraints: { readonly resources?: ReadonlyArray<string> }
  readonly parentEdgeId: string | null
  readonly status: "active" | "revoked"
  readonly expiresAt: Date
}

export interface CoordinatorView {
  readonly session: (zoneId: string, id: string) => Promise<SessionFacts | undefined>
  /** The edge and every edge above it (its path), the root first; undefined when the edge is unknown. */
  readonly path: (zoneId: string, edgeId: string) => Promise<ReadonlyArray<EdgeFacts> | undefined>
}

export const makeCoordinatorView = (db: Kysely<Tables>): CoordinatorView => ({
  session: async (zoneId, id) => {
    const { rows } = await sql<SessionFacts>`select id, application_id as "applicationId", status, expires_at as "expiresAt"
      from agent_sessions where id = ${id} and zone_id = ${zoneId}`.execute(db)
    return rows[0]
  },
  path: async (zoneId, edgeId) => {
    // depth-bounded: an edge path is never longer than the delegation hops allow
    const { rows } = await sql<EdgeFacts & { depth: number }>`
      with recursive up as (
        select e.*, 0 as depth from delegation_edges e where e.id = ${edgeId} and e.zone_id = ${zoneId}
        union all
        select p.*, up.depth + 1 from delegation_edges p join up on p.id = up.parent_edge_id where up.depth < 100
      )
      select id, issuer_application_id as "issuerApplicationId", receiver_application_id as "receiverApplicationId",
        source_session_id as "sourceSessionId", target_session_id as "targetSessionId", scopes, constraints,
        parent_edge_id as "parentEdgeId", status, expires_at as "expiresAt", depth
      from up order by depth desc`.execute(db)
    return rows.length === 0 ? undefined : rows
  }
})

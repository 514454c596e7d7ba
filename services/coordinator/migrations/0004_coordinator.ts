// The coordinator's read model: agent sessions and delegation edges, kept inline by its
// command handlers and rebuilt from the log by `caracal projections rebuild coordinator`.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table agent_sessions (
      id text primary key,
      zone_id text not null,
      application_id text not null,
      parent_id text,
      root_id text not null,
      depth integer not null,
      kind text not null check (kind in ('instance', 'ephemeral')),
      status text not null check (status in ('active', 'suspended', 'terminated')),
      suspended_by_cascade boolean not null default false,
      ttl_seconds integer not null,
      metadata jsonb not null,
      created_at timestamptz not null,
      expires_at timestamptz not null,
      ended_at timestamptz,
      end_reason text,
      end_cause_id text
    )`.execute(db)
  // live counts per zone and application (limits), children of a parent, the TTL sweep and cascades
  await sql`create index agent_sessions_zone_live on agent_sessions (zone_id, application_id) where status <> 'terminated'`.execute(db)
  await sql`create index agent_sessions_parent on agent_sessions (parent_id, status)`.execute(db)
  await sql`create index agent_sessions_expiry on agent_sessions (expires_at) where status <> 'terminated'`.execute(db)
  await sql`create index agent_sessions_zone_created on agent_sessions (zone_id, created_at, id)`.execute(db)

  await sql`
    create table delegation_edges (
      id text primary key,
      zone_id text not null,
      issuer_application_id text not null,
      receiver_application_id text not null,
      source_session_id text not null,
      target_session_id text not null,
      scopes text[] not null,
      constraints jsonb not null,
      parent_edge_id text,
      status text not null check (status in ('active', 'revoked')),
      created_at timestamptz not null,
      expires_at timestamptz not null,
      revoked_at timestamptz,
      revoke_reason text,
      revoke_cause_id text
    )`.execute(db)
  await sql`create index delegation_edges_source on delegation_edges (source_session_id, status)`.execute(db)
  await sql`create index delegation_edges_target on delegation_edges (target_session_id, status)`.execute(db)
  await sql`create index delegation_edges_parent on delegation_edges (parent_edge_id) where status = 'active'`.execute(db)
  await sql`create index delegation_edges_expiry on delegation_edges (expires_at) where status = 'active'`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table delegation_edges, agent_sessions`.execute(db)
}

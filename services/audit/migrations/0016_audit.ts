// The audit chain (services/audit): rows partitioned by the day they were recorded, so
// retention drops whole partitions (partitions.ts creates them ahead); the record ids
// (deduplication: a redelivery is a no-op, the same id with other bytes is tampering);
// one head per chain, locked per batch so replicas append to a chain one at a time while
// other chains proceed; checkpoints and retention anchors kept apart from the rows.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table audit_records (
      zone text not null,
      seq bigint not null,
      id text not null,
      recorded_at timestamptz not null,
      occurred_at timestamptz not null,
      source text not null,
      kind text not null,
      decision text,
      request_id text,
      session_id text,
      client_id text,
      jti text,
      -- exactly the bytes the MAC and the Merkle leaf cover (entry.ts)
      canonical bytea not null,
      prev_mac bytea not null,
      mac bytea not null,
      leaf_hash bytea not null,
      primary key (zone, seq, recorded_at)
    ) partition by range (recorded_at)`.execute(db)
  await sql`create index audit_records_request on audit_records (request_id) where request_id is not null`.execute(db)
  await sql`create index audit_records_session on audit_records (session_id) where session_id is not null`.execute(db)
  await sql`create index audit_records_jti on audit_records (jti) where jti is not null`.execute(db)
  await sql`create index audit_records_zone_time on audit_records (zone, recorded_at)`.execute(db)
  await sql`
    create table audit_record_ids (
      id text primary key,
      -- the record's Merkle leaf hash (SHA-256 over its canonical bytes): a redelivery must match it exactly
      digest bytea not null
    )`.execute(db)
  await sql`
    create table audit_chain_heads (
      zone text primary key,
      seq bigint not null default 0,
      mac bytea not null default '\\x0000000000000000000000000000000000000000000000000000000000000000',
      -- the Merkle frontier (merkle.ts) of the tree over seq leaves
      frontier bytea not null default '\\x',
      -- recorded_at never goes back within a chain, so retention drops a prefix of each chain
      last_recorded_at timestamptz not null default '-infinity',
      checkpointed_size bigint not null default 0
    )`.execute(db)
  await sql`
    create table audit_checkpoints (
      zone text not null,
      tree_size bigint not null,
      root bytea not null,
      -- as signed (ISO text): the signature covers these exact characters
      signed_at text not null,
      key_id text not null,
      signature bytea not null,
      created_at timestamptz not null default now(),
      primary key (zone, tree_size)
    )`.execute(db)
  await sql`create index audit_checkpoints_created on audit_checkpoints (created_at)`.execute(db)
  await sql`
    create table audit_chain_anchors (
      zone text primary key,
      -- the first seq still stored, the MAC before it and the frontier of the dropped prefix
      first_seq bigint not null,
      prev_mac bytea not null,
      frontier bytea not null,
      dropped_through timestamptz not null
    )`.execute(db)
  await sql`
    create table audit_export_state (
      id int primary key check (id = 1),
      -- the start of the next window to export: windows before it are in the bucket
      next_window timestamptz not null
    )`.execute(db)
  await sql`
    create table audit_export_zones (
      zone text primary key,
      next_seq bigint not null,
      prev_mac bytea not null,
      frontier bytea not null
    )`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ["audit_export_zones", "audit_export_state", "audit_chain_anchors", "audit_checkpoints", "audit_chain_heads", "audit_record_ids", "audit_records"]) {
    await sql`drop table ${sql.table(t)}`.execute(db)
  }
}

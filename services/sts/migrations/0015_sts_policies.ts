// The sts's own copy of the api's policies (services/sts/policy-sync.ts): the text of every
// policy version, every policy set's activation, and each zone's active set, built from the
// api's events alone (the sts never reads the api's tables). The policy sync loads what
// sts_zone_policies names into OPA; a decision reads it first (no row: no_active_policy).
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table sts_policy_versions (
      version_id text primary key,
      policy_id text not null,
      zone_id text not null,
      rego text not null,
      added_at timestamptz not null
    )`.execute(db)
  await sql`
    create table sts_policy_sets (
      id text primary key,
      zone_id text not null,
      -- the active version and its manifest ([{policyId, versionId}]); null until activated
      active_version_id text,
      manifest jsonb,
      -- the log position of the activation: a zone's latest activation is its active set
      activated_position bigint,
      archived boolean not null default false,
      updated_at timestamptz not null
    )`.execute(db)
  await sql`create index sts_policy_sets_zone on sts_policy_sets (zone_id, activated_position desc)`.execute(db)
  await sql`
    create table sts_zone_policies (
      zone_id text primary key,
      policy_set_id text not null,
      set_version_id text not null,
      manifest jsonb not null,
      updated_at timestamptz not null
    )`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table sts_zone_policies`.execute(db)
  await sql`drop table sts_policy_sets`.execute(db)
  await sql`drop table sts_policy_versions`.execute(db)
}

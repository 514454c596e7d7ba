// The api's tables: one row per record (every api aggregate, its whole record as jsonb,
// written by the api's inline projection and rebuilt from the log), and the Rego texts of
// policy versions. Uniqueness rules live here as partial unique indexes over the live
// records, checked in the statement that appends the events: a duplicate is refused
// without a lock, across replicas.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table api_records (
      id text primary key,
      type text not null,
      zone_id text not null,
      version int not null,
      status text not null check (status in ('active', 'archived')),
      record jsonb not null,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      archived_at timestamptz,
      archive_reason text
    )`.execute(db)
  // lists page by id (UUIDv7: creation order) within a type and zone
  await sql`create index api_records_list on api_records (type, zone_id, id)`.execute(db)
  await sql`create unique index api_zone_slug on api_records ((record->>'slug'))
    where type = 'zone' and status = 'active'`.execute(db)
  await sql`create unique index api_resource_identifier on api_records (zone_id, (record->>'identifier'))
    where type = 'resource' and status = 'active'`.execute(db)
  await sql`create unique index api_binding_pair on api_records (zone_id, (record->>'resourceId'), (record->>'applicationId'))
    where type = 'binding' and status = 'active'`.execute(db)
  await sql`create unique index api_grant_subject on api_records
    (zone_id, (record->>'applicationId'), (record->>'userId'), (record->>'resourceId'))
    where type = 'grant' and status = 'active'`.execute(db)
  await sql`
    create table api_policy_versions (
      id text primary key,
      policy_id text not null,
      zone_id text not null,
      number int not null,
      rego text not null,
      sha256 text not null,
      created_at timestamptz not null,
      unique (policy_id, number)
    )`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table api_policy_versions`.execute(db)
  await sql`drop table api_records`.execute(db)
}

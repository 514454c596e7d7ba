// Upstream credentials, sealed by the sts under ZONE_KEK (AES-256-GCM): the api records that a
// credential exists, only the sts holds its material, and only as ciphertext. The associated
// data binds each ciphertext to its zone and id, so a row edited to point elsewhere no longer opens.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table sts_credentials (
      id text primary key,
      zone_id text not null,
      provider_id text not null,
      nonce bytea not null check (octet_length(nonce) = 12),
      ciphertext bytea not null,
      tag bytea not null check (octet_length(tag) = 16),
      kek_id text not null,
      created_at timestamptz not null default now(),
      revoked_at timestamptz
    )`.execute(db)
  await sql`create index sts_credentials_zone on sts_credentials (zone_id, provider_id)`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table sts_credentials`.execute(db)
}

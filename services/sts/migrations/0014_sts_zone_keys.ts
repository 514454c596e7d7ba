// Zone signing keys (services/sts/keys.ts). Three tables:
//   sts_zone_keys               a projection of the `zone_key` events (public material only),
//                               written inline by the key commands and rebuilt from the log
//                               (`sts-zone-keys`); a removed key keeps its row, status 'removed'
//   sts_zone_key_secrets        each key's ES256 private key (PKCS8 DER) sealed with AES-256-GCM
//                               under ZONE_KEK, the associated data binding zone and kid. Primary
//                               state written by the command that creates the key, in its
//                               statement: it is NOT in the log, so no rebuild may touch it
//   sts_zone_key_provisioning   the api's zones as the key provisioner sees them (projection
//                               `sts-zones` of the zone stream): which still need a first key
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table sts_zone_keys (
      kid text primary key,
      zone_id text not null,
      status text not null check (status in ('next', 'active', 'retired', 'removed')),
      public_jwk jsonb not null,
      activates_at timestamptz not null,
      remove_at timestamptz,
      -- when the key ring has work to do for this key: a next key's activation, a retired
      -- key's removal (null otherwise); the ticker's one query reads the partial index below
      due_at timestamptz,
      created_at timestamptz not null
    )`.execute(db)
  await sql`create index sts_zone_keys_zone on sts_zone_keys (zone_id, created_at)`.execute(db)
  await sql`create index sts_zone_keys_due on sts_zone_keys (due_at) where due_at is not null`.execute(db)
  await sql`
    create table sts_zone_key_secrets (
      kid text primary key,
      zone_id text not null,
      kek_id text not null,
      nonce bytea not null check (octet_length(nonce) = 12),
      ciphertext bytea not null,
      tag bytea not null check (octet_length(tag) = 16),
      created_at timestamptz not null default now()
    )`.execute(db)
  // the start-up check samples the newest rows of each KEK; the re-seal walks a previous KEK's rows
  await sql`create index sts_zone_key_secrets_kek on sts_zone_key_secrets (kek_id, created_at)`.execute(db)
  await sql`
    create table sts_zone_key_provisioning (
      zone_id text primary key,
      archived boolean not null,
      provisioned_at timestamptz,
      updated_at timestamptz not null
    )`.execute(db)
  await sql`create index sts_zone_key_provisioning_pending on sts_zone_key_provisioning (updated_at)
    where provisioned_at is null and not archived`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table sts_zone_key_provisioning`.execute(db)
  await sql`drop table sts_zone_key_secrets`.execute(db)
  await sql`drop table sts_zone_keys`.execute(db)
}

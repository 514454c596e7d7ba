// Backbone v2: relay leadership as a lease with a fencing epoch, and idempotency keys that
// remember what they were used for.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  // One row per producer. `epoch` grows by one at every change of leader; the relay stamps it
  // on each publish, and Redis refuses a publish whose epoch is lower than one already seen
  // (see core/relay/fence.ts): a leader that lost its lease cannot publish after its successor.
  await sql`
    create table relay_leases (
      producer text primary key,
      epoch bigint not null default 0,
      holder text,
      expires_at timestamptz not null default '-infinity'
    )`.execute(db)
  // the canonical body a key was first used with: the same key with another body is refused
  await sql`alter table command_results add column fingerprint text`.execute(db)
  await sql`create index command_results_created on command_results (created_at)`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index command_results_created`.execute(db)
  await sql`alter table command_results drop column fingerprint`.execute(db)
  await sql`drop table relay_leases`.execute(db)
}

// The relay's per-aggregate ordering check and the projections' global log cursor.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  // the claim skips an aggregate whose earlier row is backing off; this keeps that check an index probe
  await sql`create index outbox_pending_aggregate on outbox (producer, aggregate_key, id) where status = 'pending'`.execute(db)
  await sql`
    create table projection_cursors (
      projection text primary key,
      transaction_id xid8 not null,
      position bigint not null,
      updated_at timestamptz not null default now()
    )`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table projection_cursors`.execute(db)
  await sql`drop index outbox_pending_aggregate`.execute(db)
}

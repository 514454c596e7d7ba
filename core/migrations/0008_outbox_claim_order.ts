// The relay's claim walks pending rows in id order and stops after one batch. Without an
// index in that order it read every pending row and, for each, every earlier row of its
// aggregate: quadratic in the backlog (82 s for a claim over 20,000 pending rows, measured),
// so a relay that fell behind fell further behind. See claim() in core/relay.ts.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`create index outbox_pending_order on outbox (producer, id) where status = 'pending'`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index outbox_pending_order`.execute(db)
}

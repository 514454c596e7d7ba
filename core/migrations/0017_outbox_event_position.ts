// outbox.event_position references events(position). Deleting an event row makes Postgres
// check that no outbox row still points at it, and without an index on the referencing column
// that check reads the whole outbox, once per deleted row. Events are deleted only by a group
// write taking back the rows of its refused members (caracal_write_group, 0009), but with a
// backlog of 20,000 outbox rows those checks cost ~30 ms per group with half its members
// refused by a limit: refused commands were 4× slower than accepted ones (command-write bench).
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`create index outbox_event_position on outbox (event_position)`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index outbox_event_position`.execute(db)
}

// A MAC per event in the log, so that a rebuild or an inspection can tell a row altered in
// Postgres (the append-only trigger stops the application, not a superuser) from the
// row the producer wrote.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table events add column mac text, add column mac_key_id text`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table events drop column mac, drop column mac_key_id`.execute(db)
}

// The shown form of each record (snake_case fields, secret verifiers left out), written by
// the projection beside the record, so that answers and lists are assembled without
// parsing every record (services/api/views.ts). Existing rows get theirs here.
import { type Kysely, sql } from "kysely"
import { viewFields } from "../views.ts"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`alter table api_records add column view jsonb not null default '{}'::jsonb`.execute(db)
  const { rows } = await sql<{ id: string; type: string; record: Record<string, unknown> }>`select id, type, record from api_records`.execute(db)
  for (const r of rows) {
    await sql`update api_records set view = ${JSON.stringify(viewFields(r.type, r.record))}::jsonb where id = ${r.id}`.execute(db)
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`alter table api_records drop column view`.execute(db)
}

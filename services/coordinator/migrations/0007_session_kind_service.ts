// Agent kind `service` beside `instance` and `ephemeral`: existing SDKs send it, and it
// behaves as `instance`. Widens the check on agent_sessions.kind (0004 named it implicitly).
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    alter table agent_sessions
      drop constraint agent_sessions_kind_check,
      add constraint agent_sessions_kind_check check (kind in ('instance', 'service', 'ephemeral'))`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  // fails while a `service` session exists: the narrower check cannot hold for it
  await sql`
    alter table agent_sessions
      drop constraint agent_sessions_kind_check,
      add constraint agent_sessions_kind_check check (kind in ('instance', 'ephemeral'))`.execute(db)
}

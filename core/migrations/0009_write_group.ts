// Group commit (core/group-commit.ts): one call writes a group of commands, one round trip
// and one commit. Each member's write statement runs in its own subtransaction (a
// BEGIN … EXCEPTION block), so a member that fails (a limit, a sequence conflict, a reused
// idempotency key) is rolled back alone and reports its error; the others commit.
//
// The events lock is taken first, outside every member: log readers treat a transaction as
// an event writer while it holds that lock (core/eventstore.ts, HORIZON), and a member's own
// lock would be released when its subtransaction rolls back.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create function caracal_write_group(statements text[])
    returns table (member int, written jsonb, error_code text, error_constraint text, error_message text)
    language plpgsql as $body$
    declare
      i int;
    begin
      lock table events in row exclusive mode;
      for i in 1 .. coalesce(array_length(statements, 1), 0) loop
        member := i;
        written := null;
        error_code := null;
        error_constraint := null;
        error_message := null;
        begin
          execute statements[i] into written;
        exception when others then
          get stacked diagnostics error_code = returned_sqlstate, error_constraint = constraint_name, error_message = message_text;
        end;
        return next;
      end loop;
    end
    $body$`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function caracal_write_group(text[])`.execute(db)
}

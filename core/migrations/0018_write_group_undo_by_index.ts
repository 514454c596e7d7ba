// caracal_write_group (0009) takes back the events of its refused members with
//   delete from events where id in (select … from jsonb_array_elements(…), jsonb_to_recordset(…))
// The planner reads that jsonb side as 10,000 rows and plans a hash join over the whole
// events table: a scan of the log for every group with a refused member (3.5 ms per group at
// 20,000 events in the command-write bench, growing with the log). `id = any(array(…))`
// looks each id up in events' unique index instead. One statement of the function changes;
// the rest of its text is kept as 0009 wrote it (replaced in place, and refused if not found).
import { type Kysely, sql } from "kysely"

export const BY_JOIN = `delete from events where id in (
        select e.id from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid)
        where failed ? t.ord::text);`

export const BY_INDEX = `delete from events where id = any(array(
        select e.id from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid)
        where failed ? t.ord::text));`

const swap = (db: Kysely<any>, from: string, to: string) =>
  sql`do $migration$
    declare
      def text := pg_get_functiondef('caracal_write_group(jsonb, text[])'::regprocedure);
    begin
      if position(${sql.lit(from)} in def) = 0 then
        raise exception 'caracal_write_group does not hold the statement this migration replaces';
      end if;
      execute replace(def, ${sql.lit(from)}, ${sql.lit(to)});
    end $migration$`.execute(db)

export async function up(db: Kysely<any>): Promise<void> {
  await swap(db, BY_JOIN, BY_INDEX)
}

export async function down(db: Kysely<any>): Promise<void> {
  await swap(db, BY_INDEX, BY_JOIN)
}

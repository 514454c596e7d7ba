// caracal_write_group (0009) takes back the events of its refused members with
//   delete from events where id in (select … from jsonb_array_elements(…), jsonb_to_recordset(…))
// The planner reads that jsonb side as 10,000 rows and plans a hash join over the whole
// events table: a scan of the log for every group with a refused member (3.5 ms per group at
// 20,000 events in the command-write bench, growing with the log). `id = any(array(…))`
// looks each id up in events' unique index instead. One statement of the function changes;
// the rest of its text is kept as 0009 wrote it (replaced in place, and refused if not found).
import type { Kysely } from "kysely"
import { replaceInFunction } from "../db/function-text.ts"

export const BY_JOIN = `delete from events where id in (
        select e.id from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid)
        where failed ? t.ord::text);`

export const BY_INDEX = `delete from events where id = any(array(
        select e.id from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid)
        where failed ? t.ord::text));`

export async function up(db: Kysely<any>): Promise<void> {
  await replaceInFunction(db, "caracal_write_group(jsonb, text[])", BY_JOIN, BY_INDEX)
}

export async function down(db: Kysely<any>): Promise<void> {
  await replaceInFunction(db, "caracal_write_group(jsonb, text[])", BY_INDEX, BY_JOIN)
}

// caracal_write_group (0009) evaluated each member's capacity in a subtransaction of its own,
// by a dynamic EXECUTE: per member a parse, a plan and a subtransaction, about half of the
// function's time for a group of 64 (5.5 ms per group in the command-write bench). Now every
// member's expression is evaluated in one statement, in member order (a member sees the
// capacity the members before it took), in one subtransaction. Only when one refuses (raises)
// is that undone, and each member's expression is evaluated alone in its own subtransaction,
// as before: the refused members fail, the others take their capacity, each outcome as alone.
// One statement of the function changes; the rest of its text is kept as 0009 wrote it.
import type { Kysely } from "kysely"
import { replaceInFunction } from "../db/function-text.ts"

const SIGNATURE = "caracal_write_group(jsonb, text[])"

// each member's capacity alone, in a subtransaction of its own: 0009's loop, verbatim
const LOOP = `for c in
        select t.ord::int as m, t.mem->>'capacity' as expr from jsonb_array_elements(members) with ordinality as t(mem, ord)
        where t.mem->>'capacity' is not null and assigned ? t.ord::text order by t.ord
      loop
        begin
          execute 'select ' || c.expr;
        exception when others then
          get stacked diagnostics code = returned_sqlstate, cons = constraint_name, msg = message_text;
          failed := failed || jsonb_build_object(c.m::text, jsonb_build_object('code', code, 'constraint', cons, 'message', msg));
          assigned := assigned - c.m::text;
        end;
      end loop;`

export const EACH_ALONE = `-- 3. capacity, one subtransaction per member that has one
      ${LOOP}`

export const ALL_AT_ONCE = `-- 3. capacity: every member's in one statement, in member order; when one refuses, that is
      --    undone and each member's is evaluated alone, in a subtransaction of its own
      declare
        together text;
      begin
        select string_agg(t.mem->>'capacity', ', ' order by t.ord) into together
        from jsonb_array_elements(members) with ordinality as t(mem, ord)
        where t.mem->>'capacity' is not null and assigned ? t.ord::text;
        if together is not null then
          begin
            execute 'select ' || together;
          exception when others then
            ${LOOP.replace(/\n/g, "\n      ")}
          end;
        end if;
      end;`

export async function up(db: Kysely<any>): Promise<void> {
  await replaceInFunction(db, SIGNATURE, EACH_ALONE, ALL_AT_ONCE)
}

export async function down(db: Kysely<any>): Promise<void> {
  await replaceInFunction(db, SIGNATURE, ALL_AT_ONCE, EACH_ALONE)
}

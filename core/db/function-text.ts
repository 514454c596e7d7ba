// A migration that changes one statement of a PL/pgSQL function replaces that text in the
// function's stored definition, keeping the rest exactly as the migration that created it
// wrote it; when the text is not there, it refuses rather than doing nothing.
import { type Kysely, sql } from "kysely"

/** Replaces `from` with `to` in the definition of `signature` (e.g. 'f(jsonb, text[])'). */
export const replaceInFunction = (db: Kysely<any>, signature: string, from: string, to: string) =>
  sql`do $migration$
    declare
      def text := pg_get_functiondef(${sql.lit(signature)}::regprocedure);
    begin
      if position(${sql.lit(from)} in def) = 0 then
        raise exception '% does not hold the statement this migration replaces', ${sql.lit(signature)};
      end if;
      execute replace(def, ${sql.lit(from)}, ${sql.lit(to)});
    end $migration$`.execute(db)

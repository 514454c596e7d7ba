// Live-session counters per zone, per application and per parent, and the function that
// reserves a place in all three atomically inside a spawn's write statement. It replaces
// taking the zone's lock in a transaction around reads: the counter rows' own locks
// serialise spawns only for the length of one statement, and the limits stay exact.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table session_counts (
      scope text primary key,
      live integer not null default 0 check (live >= 0)
    ) with (fillfactor = 50)`.execute(db)
  // counts replace the scans this index served; every spawn and end would otherwise maintain it
  await sql`drop index agent_sessions_zone_live`.execute(db)
  // Raises 'max_per_zone_exceeded', 'max_per_app_exceeded' or 'max_children_exceeded'
  // (SQLSTATE CA429) and so aborts the statement; rows are taken in one fixed order
  // (zone, application, parent) so that concurrent spawns cannot deadlock.
  await sql`
    create function coordinator_reserve(p_zone text, p_app text, p_parent text, p_max_zone integer, p_max_app integer, p_max_children integer)
    returns boolean language plpgsql as $$
    declare
      scopes text[] := array['zone:' || p_zone, 'app:' || p_zone || ':' || p_app];
      limits integer[] := array[p_max_zone, p_max_app];
      codes text[] := array['max_per_zone_exceeded', 'max_per_app_exceeded'];
    begin
      if p_parent is not null then
        scopes := scopes || ('parent:' || p_parent);
        limits := limits || p_max_children;
        codes := codes || 'max_children_exceeded'::text;
      end if;
      for i in 1 .. array_length(scopes, 1) loop
        update session_counts set live = live + 1 where scope = scopes[i] and live < limits[i];
        if not found then
          -- the first session of its zone, application or parent creates the row; otherwise the limit is reached
          insert into session_counts (scope, live) values (scopes[i], 0) on conflict (scope) do nothing;
          update session_counts set live = live + 1 where scope = scopes[i] and live < limits[i];
          if not found then
            raise exception '%', codes[i] using errcode = 'CA429';
          end if;
        end if;
      end loop;
      return true;
    end $$`.execute(db)
  // the counterpart when a session ends, taking the rows in the same order
  await sql`
    create function coordinator_release(p_zone text, p_app text, p_parent text)
    returns boolean language plpgsql as $$
    begin
      update session_counts set live = greatest(live - 1, 0) where scope = 'zone:' || p_zone;
      update session_counts set live = greatest(live - 1, 0) where scope = 'app:' || p_zone || ':' || p_app;
      if p_parent is not null then
        update session_counts set live = greatest(live - 1, 0) where scope = 'parent:' || p_parent;
      end if;
      return true;
    end $$`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`create index agent_sessions_zone_live on agent_sessions (zone_id, application_id) where status <> 'terminated'`.execute(db)
  await sql`drop function coordinator_release`.execute(db)
  await sql`drop function coordinator_reserve`.execute(db)
  await sql`drop table session_counts`.execute(db)
}

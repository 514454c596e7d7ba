// The zones and applications the coordinator knows of, projected from the api's events
// (services/coordinator/api-status.ts), and the check a spawn makes against them inside its
// write statement: a spawn for an archived zone or application is refused (403).
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table coordinator_known_principals (
      kind text not null check (kind in ('zone', 'application')),
      id text not null,
      zone_id text not null,
      status text not null check (status in ('active', 'archived')),
      updated_at timestamptz not null,
      primary key (kind, id)
    )`.execute(db)
  // Raises 'zone_inactive' or 'application_inactive' (SQLSTATE CA403) when the zone or the
  // application is archived, and so aborts the spawn's statement; otherwise answers true.
  // One statement, two primary-key lookups. On a projection miss (an event not yet projected:
  // read-your-writes) the aggregate's events are read from the log, through the events table's
  // unique (aggregate_type, aggregate_id, sequence) index. Archived is final: an archive event
  // anywhere in the history counts, as the projection keeps it (fail closed).
  // An id neither the projection nor the log knows is allowed: not every id a caller names
  // was made by the api (installations without it, tests), and the caller's mandate comes
  // from the sts, which refuses to issue one for an archived zone or application.
  await sql`
    create function coordinator_require_active(p_zone text, p_app text)
    returns boolean language plpgsql as $$
    declare
      r record;
    begin
      for r in
        select k.kind, coalesce(
          (select p.status from coordinator_known_principals p where p.kind = k.kind and p.id = k.id),
          (select case bool_or(e.type = k.ended) when true then 'archived' when false then 'active' end
            from events e where e.aggregate_type = k.kind and e.aggregate_id = k.id)) as status
        from (values (1, 'zone', p_zone, 'ZoneArchived'), (2, 'application', p_app, 'ApplicationArchived'))
          as k(ord, kind, id, ended)
        order by k.ord
      loop
        if r.status = 'archived' then
          raise exception '%', r.kind || '_inactive' using errcode = 'CA403';
        end if;
      end loop;
      return true;
    end $$`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop function coordinator_require_active`.execute(db)
  await sql`drop table coordinator_known_principals`.execute(db)
}

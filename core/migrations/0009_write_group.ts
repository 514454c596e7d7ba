// Group commit (core/group-commit.ts): one call writes the events, outbox rows and
// idempotency keys of a group of commands, set-based, and evaluates each member's capacity;
// the caller then writes the members' projection rows in the same transaction and commits.
//
// Each member gets its own outcome without aborting the others, in this order:
// 1. its idempotency key (the first member of a key in the group wins; a key already stored
//    fails the member with a unique violation on command_results_pkey, as a lone write would);
// 2. its events (ON CONFLICT DO NOTHING: a member any of whose events was not inserted lost
//    the race for its aggregate's sequence; its inserted events are removed again);
// 3. its capacity expression, in its own subtransaction (a refusal raises and is reported);
//    only members that passed 1 and 2 take capacity, so nothing taken is ever given back;
// 4. the outbox rows of the members that passed, and one NOTIFY per producer that asked.
// A member that failed leaves nothing behind: its key and events are deleted (rows of this
// transaction, never seen by anyone).
//
// The events lock is taken first: log readers treat a transaction as an event writer while it
// holds that lock (core/eventstore.ts, HORIZON), from before it is given a transaction id.
// Then the tables the members' projection rows go to, in name order: a rebuild locks its
// tables in name order too (core/projection.ts), so the two never deadlock.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  // The log stays append-only for everything committed; a transaction may take back only the
  // rows it appended itself, before it commits (a group member that failed), as a rollback would.
  await sql`
    create or replace function events_append_only() returns trigger language plpgsql as $$
    begin
      if tg_op = 'DELETE' and old.transaction_id = pg_current_xact_id() then
        return old;
      end if;
      raise exception 'events is append-only';
    end $$`.execute(db)
  await sql`
    create function caracal_write_group(members jsonb, tables text[])
    returns table (member int, written jsonb, error_code text, error_constraint text, error_message text)
    language plpgsql as $body$
    declare
      failed jsonb := '{}'::jsonb;   -- member → {code, constraint, message}
      assigned jsonb := '{}'::jsonb; -- member → [{id, position, transaction_id}]
      lost int[];
      c record;
      code text;
      cons text;
      msg text;
    begin
      lock table events in row exclusive mode;
      if coalesce(array_length(tables, 1), 0) > 0 then
        execute 'lock table ' || (select string_agg(quote_ident(t), ', ' order by t) from unnest(tables) as t) || ' in row exclusive mode';
      end if;

      -- 1. idempotency keys
      with k as (
        select t.ord::int as m, t.mem->'key' as key,
          row_number() over (partition by t.mem->'key'->>'scope', t.mem->'key'->>'idempotency_key' order by t.ord) as nth
        from jsonb_array_elements(members) with ordinality as t(mem, ord)
        where jsonb_typeof(t.mem->'key') = 'object'),
      ins as (
        insert into command_results (scope, idempotency_key, result, fingerprint)
        select key->>'scope', key->>'idempotency_key', key->'result', key->>'fingerprint' from k where nth = 1
        on conflict do nothing
        returning scope, idempotency_key)
      select coalesce(array_agg(k.m), '{}') into lost from k
      where k.nth > 1 or not exists (select 1 from ins where ins.scope = k.key->>'scope' and ins.idempotency_key = k.key->>'idempotency_key');
      select failed || coalesce(jsonb_object_agg(l::text, jsonb_build_object('code', '23505', 'constraint', 'command_results_pkey',
        'message', 'idempotency key already used')), '{}') into failed from unnest(lost) as l;

      -- 2. events
      with ev as (
        select t.ord::int as m, e.*
        from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid, zone_id text, aggregate_type text, aggregate_id text, sequence int,
            type text, schema_version int, occurred_at timestamptz, actor jsonb, correlation_id text, causation_id text,
            data jsonb, mac text, mac_key_id text)
        where not failed ? t.ord::text),
      ins as (
        insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
          correlation_id, causation_id, data, mac, mac_key_id)
        select id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
          correlation_id, causation_id, data, mac, mac_key_id
        from ev order by m, sequence
        on conflict do nothing
        returning id, position, transaction_id),
      per as (
        select ev.m, count(ins.id) = count(*) as whole,
          jsonb_agg(jsonb_build_object('id', ins.id, 'position', ins.position::text, 'transaction_id', ins.transaction_id::text)
            order by ev.sequence) filter (where ins.id is not null) as rows
        from ev left join ins on ins.id = ev.id group by ev.m)
      select coalesce(jsonb_object_agg(m::text, rows) filter (where whole), '{}'),
        coalesce(array_agg(m) filter (where not whole), '{}')
      into assigned, lost from per;
      select failed || coalesce(jsonb_object_agg(l::text, jsonb_build_object('code', '23505',
        'constraint', 'events_aggregate_type_aggregate_id_sequence_key', 'message', 'sequence taken')), '{}')
      into failed from unnest(lost) as l;

      -- 3. capacity, one subtransaction per member that has one
      for c in
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
      end loop;

      -- a failed member leaves nothing: its events (those it inserted) and its key
      delete from events where id in (
        select e.id from jsonb_array_elements(members) with ordinality as t(mem, ord),
          jsonb_to_recordset(t.mem->'events') as e(id uuid)
        where failed ? t.ord::text);
      delete from command_results r using jsonb_array_elements(members) with ordinality as t(mem, ord)
      where failed ? t.ord::text and jsonb_typeof(t.mem->'key') = 'object'
        and r.scope = t.mem->'key'->>'scope' and r.idempotency_key = t.mem->'key'->>'idempotency_key'
        -- a member that lost its key to another command leaves that command's row alone
        and (failed->(t.ord::text)->>'constraint') is distinct from 'command_results_pkey';

      -- 4. outbox rows and wake-ups for the members that passed
      insert into outbox (producer, stream, event_position, aggregate_key)
      select t.mem->>'producer', r.stream, (a->>'position')::bigint, e.aggregate_type || '/' || e.aggregate_id
      from jsonb_array_elements(members) with ordinality as t(mem, ord)
        cross join jsonb_to_recordset(t.mem->'routes') as r(event_id uuid, stream text)
        join jsonb_to_recordset(t.mem->'events') as e(id uuid, aggregate_type text, aggregate_id text) on e.id = r.event_id
        join jsonb_array_elements(assigned->(t.ord::text)) as a on (a->>'id')::uuid = r.event_id
      where assigned ? t.ord::text
      order by t.ord, (a->>'position')::bigint;
      perform pg_notify(n.channel, n.producer) from (
        select distinct t.mem->>'notify' as channel, t.mem->>'producer' as producer
        from jsonb_array_elements(members) with ordinality as t(mem, ord)
        where assigned ? t.ord::text and t.mem->>'notify' is not null) as n;

      return query
        select t.ord::int, assigned->(t.ord::text), failed->(t.ord::text)->>'code', failed->(t.ord::text)->>'constraint',
          failed->(t.ord::text)->>'message'
        from jsonb_array_elements(members) with ordinality as t(mem, ord);
    end
    $body$`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`
    create or replace function events_append_only() returns trigger language plpgsql as $$
    begin
      raise exception 'events is append-only';
    end $$`.execute(db)
  await sql`drop function caracal_write_group(jsonb, text[])`.execute(db)
}

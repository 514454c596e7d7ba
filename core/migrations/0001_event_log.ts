// The backbone's tables: the append-only event log, the outbox, idempotency keys and
// projection checkpoints.
import { type Kysely, sql } from "kysely"

export async function up(db: Kysely<any>): Promise<void> {
  await sql`
    create table events (
      position bigint generated always as identity primary key,
      transaction_id xid8 not null default pg_current_xact_id(),
      id uuid not null unique,
      zone_id text not null,
      aggregate_type text not null,
      aggregate_id text not null,
      sequence integer not null check (sequence > 0),
      type text not null,
      schema_version integer not null check (schema_version > 0),
      occurred_at timestamptz not null,
      actor jsonb not null,
      correlation_id text not null,
      causation_id text,
      data jsonb not null,
      -- optimistic concurrency: two writers of the same aggregate cannot both append sequence n
      unique (aggregate_type, aggregate_id, sequence)
    )`.execute(db)
  // the gap-free reader orders by (transaction_id, position)
  await sql`create index events_tx_position on events (transaction_id, position)`.execute(db)
  await sql`create index events_zone_type on events (zone_id, aggregate_type, position)`.execute(db)
  // the log is append-only: refuse updates and deletes at the database, not just in code
  await sql`
    create function events_append_only() returns trigger language plpgsql as $$
    begin
      raise exception 'events is append-only';
    end $$`.execute(db)
  await sql`
    create trigger events_no_update before update or delete on events
    for each row execute function events_append_only()`.execute(db)

  await sql`
    create table outbox (
      id bigint generated always as identity primary key,
      producer text not null,
      stream text not null,
      event_position bigint not null references events (position),
      aggregate_key text not null,
      status text not null default 'pending' check (status in ('pending', 'sent', 'dead')),
      attempts integer not null default 0,
      next_attempt_at timestamptz not null default now(),
      lease_until timestamptz,
      last_error text,
      created_at timestamptz not null default now(),
      sent_at timestamptz
    )`.execute(db)
  await sql`create index outbox_pending on outbox (producer, next_attempt_at, id) where status = 'pending'`.execute(db)
  await sql`create index outbox_dead on outbox (producer, id) where status = 'dead'`.execute(db)

  await sql`
    create table command_results (
      scope text not null,
      idempotency_key text not null,
      result jsonb not null,
      created_at timestamptz not null default now(),
      primary key (scope, idempotency_key)
    )`.execute(db)

  await sql`
    create table projection_checkpoints (
      projection text not null,
      aggregate_type text not null,
      aggregate_id text not null,
      sequence integer not null,
      primary key (projection, aggregate_type, aggregate_id)
    )`.execute(db)
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop table projection_checkpoints, command_results, outbox, events`.execute(db)
  await sql`drop function events_append_only`.execute(db)
}

// The write statement of a command: events, outbox rows, the inline projection, a
// capacity, the idempotency key and the relay's wake-up, all in one SQL statement.
import { type RawBuilder, sql } from "kysely"
import type { CommandMeta, Execution, PendingEvent } from "./command.ts"
import type { MemberWrite } from "./group-commit.ts"
import { OUTBOX_CHANNEL, outboxSignal } from "./outbox-signal.ts"
import { type LoggedFields, logMac } from "./signing.ts"

/**
 * One statement appends the events, writes their outbox rows, records the idempotency
 * key, runs the SQL projection and queues a NOTIFY for the relay (delivered only if this
 * commits). Data-modifying CTEs all run, and the statement is atomic on its own.
 */
export const writeStatement = <R>(
  x: Execution<any, any, any, any, R>,
  pending: ReadonlyArray<PendingEvent>,
  projection: ReadonlyArray<RawBuilder<unknown>>,
  capacity: RawBuilder<unknown> | undefined,
  scope: string,
  result: R
) => {
  const m = x.meta
  const actor = JSON.stringify(m.actor)
  const events = sql.join(pending.map((e) => {
    const macText = x.signer ? logMac(x.signer, loggedFields(e, m)) : null
    return sql`(${e.id}::uuid, ${m.zoneId}, ${e.aggregateType}, ${e.aggregateId}, ${e.sequence}, ${e.type}, ${e.schemaVersion}, ${m.now}::timestamptz, ${actor}::jsonb, ${m.correlationId}, ${m.causationId ?? null}, ${JSON.stringify(e.data)}::jsonb, ${macText}, ${x.signer?.id ?? null})`
  }))
  const routes = pending.flatMap((e) => x.streams(e).map((stream) => sql`(${e.id}::uuid, ${stream})`))
  const notify = !outboxSignal.leadsHere(x.producer)
  const parts = [
    sql`e as (insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, causation_id, data, mac, mac_key_id)
      values ${events} returning position, transaction_id, id, aggregate_type, aggregate_id)`,
    routes.length === 0 ? sql`o as (select 1)` : sql`o as (insert into outbox (producer, stream, event_position, aggregate_key)
      select ${x.producer}, r.stream, e.position::bigint, e.aggregate_type || '/' || e.aggregate_id
      from e join (values ${sql.join(routes)}) as r (event_id, stream) on r.event_id = e.id)`,
    // the leader's own process is woken directly after commit; elsewhere NOTIFY reaches it
    ...(notify ? [sql`n as (select pg_notify(${OUTBOX_CHANNEL}, ${x.producer}))`] : []),
    ...projection.map((p, i) => sql`${sql.raw(`p${i}`)} as (${p})`),
    // a SELECT runs only if referenced: the final select names it
    ...(capacity === undefined ? [] : [sql`g as (select (${capacity}) as ok)`]),
    ...(m.idempotencyKey === undefined ? [] : [
      sql`k as (insert into command_results (scope, idempotency_key, result, fingerprint)
        values (${scope}, ${m.idempotencyKey}, ${JSON.stringify(result)}::jsonb, ${m.idempotencyFingerprint ?? null}))`
    ])
  ]
  const from = sql.raw(["e", ...(notify ? ["n"] : []), ...(capacity === undefined ? [] : ["g"])].join(", "))
  // only what the database assigned comes back; the rest of each row is already known here
  return sql<{ id: string; position: string; transaction_id: string }>`with ${sql.join(parts)}
    select e.id, e.position::text as position, e.transaction_id::text as transaction_id from ${from}`
}

/** The same write as a group member (core/group-commit.ts): rows as JSON, the capacity as SQL text. */
export const memberWrite = <R>(
  x: Execution<any, any, any, any, R>,
  pending: ReadonlyArray<PendingEvent>,
  capacity: string | null,
  scope: string,
  result: R
): MemberWrite => {
  const m = x.meta
  return {
    producer: x.producer,
    events: pending.map((e) => ({
      id: e.id,
      zone_id: m.zoneId,
      aggregate_type: e.aggregateType,
      aggregate_id: e.aggregateId,
      sequence: e.sequence,
      type: e.type,
      schema_version: e.schemaVersion,
      occurred_at: m.now.toISOString(),
      actor: m.actor,
      correlation_id: m.correlationId,
      causation_id: m.causationId ?? null,
      data: e.data,
      mac: x.signer ? logMac(x.signer, loggedFields(e, m)) : null,
      mac_key_id: x.signer?.id ?? null
    })),
    routes: pending.flatMap((e) => x.streams(e).map((stream) => ({ event_id: e.id, stream }))),
    notify: outboxSignal.leadsHere(x.producer) ? null : OUTBOX_CHANNEL,
    key: m.idempotencyKey === undefined ? null : {
      scope,
      idempotency_key: m.idempotencyKey,
      result,
      fingerprint: m.idempotencyFingerprint ?? null
    },
    capacity
  }
}

const loggedFields = (e: PendingEvent, m: CommandMeta): LoggedFields => ({
  id: e.id,
  type: e.type,
  schemaVersion: e.schemaVersion,
  zoneId: m.zoneId,
  aggregateType: e.aggregateType,
  aggregateId: e.aggregateId,
  sequence: e.sequence,
  occurredAt: m.now.toISOString(),
  actor: m.actor,
  correlationId: m.correlationId,
  causationId: m.causationId ?? null,
  data: e.data
})


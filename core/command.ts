// Commands, deciders and the command handler. A handler loads an aggregate's events,
// folds them into state, asks the pure decider for new events and, atomically (one
// statement, or one transaction when the inline projection is code), appends them,
// updates the service's own tables (inline projection), writes one outbox row per
// (event, stream) and records the idempotency key.
import { Cause, Effect, Exit, Schema } from "effect"
import { type Kysely, type RawBuilder, sql, type Transaction } from "kysely"
import { v7 as uuidv7 } from "uuid"
import type { EventRegistry } from "../schemas/registry.ts"
import type { Actor } from "../schemas/envelope.ts"
import { type AggregateCache, cacheFor } from "./aggregate-cache.ts"
import type { DatabaseShape } from "./db/database.ts"
import { outboxSignal } from "./outbox-signal.ts"
import { type LoggedFields, logMac, type SigningKey } from "./signing.ts"
import { DbError } from "./db/database.ts"
import type { Tables } from "./db/tables.ts"
import { type EventRow, isUniqueViolation, loadAggregateEvents, SequenceConflict } from "./eventstore.ts"

/** A domain event before it is stored: its type (past tense) and its data. */
export interface DomainEvent {
  readonly type: string
  readonly data: unknown
}

/** What every command carries besides its payload: who, when, and why. */
export interface CommandMeta {
  readonly zoneId: string
  readonly actor: Actor
  /** The decider's only clock. */
  readonly now: Date
  readonly correlationId: string
  readonly causationId?: string | null
  readonly idempotencyKey?: string | undefined
}

/** An aggregate as a decider: pure, no I/O, no clock (time comes in CommandMeta). */
export interface Aggregate<S, C, E extends DomainEvent, Err> {
  readonly type: string
  readonly initialState: S
  readonly decide: (command: C, state: S, meta: CommandMeta) => Effect.Effect<ReadonlyArray<E>, Err>
  readonly evolve: (state: S, event: E) => S
}

export class ConcurrencyExhausted extends Schema.TaggedError<ConcurrencyExhausted>()("ConcurrencyExhausted", {
  aggregate: Schema.String,
  attempts: Schema.Number
}) {}

/** An event about to be appended: everything but its position, which the insert assigns. */
export interface PendingEvent {
  readonly id: string
  readonly aggregateType: string
  readonly aggregateId: string
  readonly sequence: number
  readonly type: string
  readonly schemaVersion: number
  /** The encoded (JSON) data of the latest version. */
  readonly data: unknown
}

export interface Execution<S, C, E extends DomainEvent, Err, R> {
  readonly aggregate: Aggregate<S, C, E, Err>
  readonly id: string
  /** The command to decide (or use `prepare`). */
  readonly command?: C
  readonly meta: CommandMeta
  /** The service that owns the outbox rows (its relay publishes them). */
  readonly producer: string
  /** Streams an event is published to (usually one: its aggregate type's). */
  readonly streams: (event: PendingEvent) => ReadonlyArray<string>
  /**
   * The inline projection as SQL statements (INSERT/UPDATE/DELETE) that run inside the
   * single statement that appends the events: the whole command is one round trip.
   */
  readonly projectSql?: (state: S, events: ReadonlyArray<PendingEvent>, meta: CommandMeta) => ReadonlyArray<RawBuilder<unknown>>
  /**
   * A check the database makes inside the write statement, e.g. reserving capacity against
   * a limit with an atomic counter update; it raises to refuse, which aborts the whole
   * statement (nothing is written). `rejectOnWrite` turns that refusal into the domain error.
   */
  readonly guardSql?: (state: S, events: ReadonlyArray<PendingEvent>, meta: CommandMeta) => RawBuilder<unknown> | undefined
  readonly rejectOnWrite?: (error: unknown) => Err | undefined
  /**
   * For a command that needs facts beyond its own aggregate (limits, a parent's state): reads
   * them inside the transaction, under whatever locks it takes, and returns the command to
   * decide. Replaces `command`; implies a transaction.
   */
  readonly prepare?: (trx: Transaction<Tables>) => Promise<C>
  /** The inline projection as code, for projections that must read first: runs in a transaction. */
  readonly project?: (trx: Transaction<Tables>, stored: ReadonlyArray<EventRow>, state: S) => Promise<void>
  /** What the caller gets back; stored with the idempotency key and returned on a repeat. */
  readonly result: (state: S, events: ReadonlyArray<PendingEvent>) => R
  /** The id was just generated: skip loading (a collision still surfaces as a conflict and reloads). */
  readonly isNew?: boolean
  /** Signs each event in the log (STREAMS_HMAC_KEY), so tampering in Postgres is detectable. */
  readonly signer?: SigningKey | undefined
}

export interface Outcome<R> {
  readonly result: R
  readonly events: ReadonlyArray<EventRow>
  /** true when the idempotency key had been used: nothing was written. */
  readonly replayed: boolean
}

/**
 * Bounded: a hot aggregate under contention fails visibly rather than spinning. Every
 * round of conflicts has one winner, so n concurrent writers of one aggregate all
 * commit when n <= MAX_ATTEMPTS.
 */
export const MAX_ATTEMPTS = 10

class DomainRejection<Err> extends Error {
  readonly error: Err
  constructor(error: Err) {
    super("domain rejection")
    this.error = error
  }
}

export const OUTBOX_CHANNEL = "caracal_outbox"

/** Folds stored rows (upcast to their latest version) into state. */
export const foldRows = <S, E extends DomainEvent>(
  aggregate: { readonly initialState: S; readonly evolve: (s: S, e: E) => S },
  registry: EventRegistry,
  rows: ReadonlyArray<EventRow>,
  from: S = aggregate.initialState
): S => {
  let state = from
  for (const r of rows) {
    const decoded = registry.decode(r.type, r.schema_version, r.data)
    // the log only holds events this code wrote; an undecodable one is a deployment bug
    if (decoded._tag === "Failure") throw new Error(`cannot fold ${r.type} v${r.schema_version}: ${decoded.failure.detail}`)
    state = aggregate.evolve(state, { type: r.type, data: decoded.success.data } as E)
  }
  return state
}

type Plan<S, R> =
  | { readonly replayed: true; readonly result: R }
  | { readonly replayed: false; readonly state: S; readonly pending: ReadonlyArray<PendingEvent>; readonly result: R; readonly sequence: number }

/** Loads the aggregate (and a prior result for the idempotency key), folds and decides. */
const cacheKey = (x: Execution<any, any, any, any, any>) => `${x.aggregate.type}\u0000${x.id}`

const plan = async <S, C, E extends DomainEvent, Err, R>(
  db: Kysely<Tables> | Transaction<Tables>,
  registry: EventRegistry,
  x: Execution<S, C, E, Err, R>,
  scope: string,
  cache: AggregateCache
): Promise<Plan<S, R>> => {
  if (x.meta.idempotencyKey !== undefined) {
    const prior = await db.selectFrom("command_results").select("result")
      .where("scope", "=", scope).where("idempotency_key", "=", x.meta.idempotencyKey).executeTakeFirst()
    if (prior) return { replayed: true, result: prior.result as R }
  }
  const known = x.isNew ? { state: x.aggregate.initialState, sequence: 0 } : cache.get(cacheKey(x)) as { state: S; sequence: number } | undefined
  let state: S
  let last: number
  if (known) {
    state = known.state
    last = known.sequence
  } else {
    const rows = await loadAggregateEvents(db, { type: x.aggregate.type, id: x.id })
    state = foldRows(x.aggregate, registry, rows)
    last = rows.length === 0 ? 0 : rows[rows.length - 1]!.sequence
  }
  const command = x.prepare ? await x.prepare(db as Transaction<Tables>) : x.command!
  const decided = Effect.runSyncExit(x.aggregate.decide(command, state, x.meta))
  if (Exit.isFailure(decided)) {
    const failure = Cause.findErrorOption(decided.cause)
    if (failure._tag === "Some") throw new DomainRejection(failure.value)
    throw Cause.squash(decided.cause)
  }
  const pending = decided.value.map((e, i): PendingEvent => {
    const encoded = registry.encode(e.type, e.data)
    return {
      id: uuidv7(),
      aggregateType: x.aggregate.type,
      aggregateId: x.id,
      sequence: last + i + 1,
      type: e.type,
      schemaVersion: encoded.version,
      data: encoded.json
    }
  })
  const newState = decided.value.reduce(x.aggregate.evolve, state)
  return { replayed: false, state: newState, pending, result: x.result(newState, pending), sequence: last + pending.length }
}

/**
 * One statement appends the events, writes their outbox rows, records the idempotency
 * key, runs the SQL projection and queues a NOTIFY for the relay (delivered only if this
 * commits). Data-modifying CTEs all run, and the statement is atomic on its own.
 */
const writeStatement = <R>(
  x: Execution<any, any, any, any, R>,
  pending: ReadonlyArray<PendingEvent>,
  projection: ReadonlyArray<RawBuilder<unknown>>,
  guard: RawBuilder<unknown> | undefined,
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
    ...(guard === undefined ? [] : [sql`g as (select (${guard}) as ok)`]),
    ...(m.idempotencyKey === undefined ? [] : [
      sql`k as (insert into command_results (scope, idempotency_key, result) values (${scope}, ${m.idempotencyKey}, ${JSON.stringify(result)}::jsonb))`
    ])
  ]
  const from = sql.raw(["e", ...(notify ? ["n"] : []), ...(guard === undefined ? [] : ["g"])].join(", "))
  // only what the database assigned comes back; the rest of each row is already known here
  return sql<{ id: string; position: string; transaction_id: string }>`with ${sql.join(parts)}
    select e.id, e.position::text as position, e.transaction_id::text as transaction_id from ${from}`
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

const runOnce = async <S, C, E extends DomainEvent, Err, R>(
  db: Kysely<Tables>,
  registry: EventRegistry,
  x: Execution<S, C, E, Err, R>,
  cache: AggregateCache
): Promise<Outcome<R>> => {
  const scope = `${x.aggregate.type}:${x.meta.zoneId}`
  let lastPlan: Plan<S, R> | undefined
  const planned = async (conn: Kysely<Tables> | Transaction<Tables>) => (lastPlan = await plan(conn, registry, x, scope, cache))
  const write = async (conn: Kysely<Tables> | Transaction<Tables>, p: Plan<S, R>) => {
    if (p.replayed) return { result: p.result, events: [], replayed: true }
    if (p.pending.length === 0) return { result: p.result, events: [], replayed: false }
    try {
      const projection = x.projectSql ? x.projectSql(p.state, p.pending, x.meta) : []
      const guard = x.guardSql?.(p.state, p.pending, x.meta)
      const { rows } = await writeStatement(x, p.pending, projection, guard, scope, p.result).execute(conn)
      const assigned = new Map(rows.map((r) => [r.id, r]))
      const stored = p.pending.map((e): EventRow => ({
        position: assigned.get(e.id)!.position,
        transaction_id: assigned.get(e.id)!.transaction_id,
        id: e.id,
        zone_id: x.meta.zoneId,
        aggregate_type: e.aggregateType,
        aggregate_id: e.aggregateId,
        sequence: e.sequence,
        type: e.type,
        schema_version: e.schemaVersion,
        occurred_at: x.meta.now.toISOString(),
        actor: x.meta.actor,
        correlation_id: x.meta.correlationId,
        causation_id: x.meta.causationId ?? null,
        data: e.data
      }))
      if (x.project) await x.project(conn as Transaction<Tables>, stored, p.state)
      return { result: p.result, events: stored, replayed: false }
    } catch (e) {
      cache.delete(cacheKey(x))
      if (isUniqueViolation(e, "events_aggregate_type_aggregate_id_sequence_key")) throw new SequenceConflict(`${x.aggregate.type}/${x.id}`)
      const refused = x.rejectOnWrite?.(e)
      if (refused !== undefined) throw new DomainRejection(refused)
      throw e
    }
  }
  // Without a code projection the command needs no transaction: the read is optimistic
  // (the unique sequence catches a concurrent writer) and the write is one statement.
  const outcome = x.project === undefined && x.prepare === undefined
    ? await write(db, await planned(db))
    : await db.transaction().execute(async (trx) => write(trx, await planned(trx)))
  if (lastPlan && !lastPlan.replayed && lastPlan.pending.length > 0) {
    cache.set(cacheKey(x), { state: lastPlan.state, sequence: lastPlan.sequence })
    outboxSignal.committed(x.producer)
  }
  return outcome
}

/**
 * Runs a command. Domain errors fail with the decider's error type; a sequence conflict
 * (another writer of the same aggregate committed first) reloads and retries, up to
 * MAX_ATTEMPTS; a repeated idempotency key returns the first result without new events.
 */
export const execute = <S, C, E extends DomainEvent, Err, R>(
  database: DatabaseShape,
  registry: EventRegistry,
  x: Execution<S, C, E, Err, R>
): Effect.Effect<Outcome<R>, Err | DbError | ConcurrencyExhausted> =>
  Effect.gen(function*() {
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const exit = yield* Effect.exit(Effect.tryPromise({
        // "new" is a hint for the first try only: after a conflict the aggregate exists
      try: () => runOnce(database.db, registry, attempt === 1 ? x : { ...x, isNew: false }, cacheFor(database)),
        catch: (e) => e
      }))
      if (Exit.isSuccess(exit)) return exit.value
      const error = Cause.squash(exit.cause)
      if (error instanceof DomainRejection) return yield* Effect.fail(error.error as Err)
      // a concurrent first use of the same idempotency key: the retry finds its result
      const retryable = error instanceof SequenceConflict || isUniqueViolation(error, "command_results_pkey")
      if (!retryable) return yield* new DbError({ cause: error })
      // jitter spreads the losers out so that the next round has fewer collisions
      yield* Effect.sleep(`${Math.floor(Math.random() * Math.min(50, 2 ** attempt))} millis`)
    }
    return yield* new ConcurrencyExhausted({ aggregate: `${x.aggregate.type}/${x.id}`, attempts: MAX_ATTEMPTS })
  })

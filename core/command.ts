// Commands, deciders and the command handler. A handler loads an aggregate's events,
// folds them into state, asks the pure decider for new events and, in ONE Postgres
// transaction, appends them, updates the service's own tables (inline projection),
// writes one outbox row per (event, stream) and records the idempotency key.
import { Cause, Effect, Exit, Schema } from "effect"
import { type Kysely, sql, type Transaction } from "kysely"
import type { EventRegistry } from "../schemas/registry.ts"
import type { Actor } from "../schemas/envelope.ts"
import type { DatabaseShape } from "./db/database.ts"
import { DbError } from "./db/database.ts"
import type { Tables } from "./db/tables.ts"
import { appendEvents, type EventRow, isUniqueViolation, loadAggregateEvents, SequenceConflict } from "./eventstore.ts"

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

export interface Execution<S, C, E extends DomainEvent, Err, R> {
  readonly aggregate: Aggregate<S, C, E, Err>
  readonly id: string
  readonly command: C
  readonly meta: CommandMeta
  /** The service that owns the outbox rows (its relay publishes them). */
  readonly producer: string
  /** Streams an event is published to (usually one: its aggregate type's). */
  readonly streams: (event: EventRow) => ReadonlyArray<string>
  /** The inline projection: updates the service's own tables inside the same transaction. */
  readonly project?: (trx: Transaction<Tables>, stored: ReadonlyArray<EventRow>, state: S) => Promise<void>
  /** What the caller gets back; stored with the idempotency key and returned on a repeat. */
  readonly result: (state: S, stored: ReadonlyArray<EventRow>) => R
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

const once = async <S, C, E extends DomainEvent, Err, R>(
  db: Kysely<Tables>,
  registry: EventRegistry,
  x: Execution<S, C, E, Err, R>
): Promise<Outcome<R>> =>
  db.transaction().execute(async (trx) => {
    const scope = `${x.aggregate.type}:${x.meta.zoneId}`
    if (x.meta.idempotencyKey !== undefined) {
      const prior = await trx.selectFrom("command_results").select("result")
        .where("scope", "=", scope).where("idempotency_key", "=", x.meta.idempotencyKey).executeTakeFirst()
      if (prior) return { result: prior.result as R, events: [], replayed: true }
    }
    const ref = { type: x.aggregate.type, id: x.id }
    const rows = await loadAggregateEvents(trx, ref)
    const state = foldRows(x.aggregate, registry, rows)
    const decided = Effect.runSyncExit(x.aggregate.decide(x.command, state, x.meta))
    if (Exit.isFailure(decided)) {
      const failure = Cause.findErrorOption(decided.cause)
      if (failure._tag === "Some") throw new DomainRejection(failure.value)
      throw Cause.squash(decided.cause)
    }
    const events = decided.value
    const newState = events.reduce(x.aggregate.evolve, state)
    const stored = await appendEvents(
      trx,
      ref,
      rows.length === 0 ? 0 : rows[rows.length - 1]!.sequence,
      events.map((e) => {
        const encoded = registry.encode(e.type, e.data)
        return { type: e.type, schemaVersion: encoded.version, data: encoded.json }
      }),
      {
        zoneId: x.meta.zoneId,
        actor: x.meta.actor,
        occurredAt: x.meta.now,
        correlationId: x.meta.correlationId,
        causationId: x.meta.causationId ?? null
      }
    )
    if (x.project) await x.project(trx, stored, newState)
    await writeOutbox(trx, x.producer, stored, x.streams)
    const result = x.result(newState, stored)
    if (x.meta.idempotencyKey !== undefined) {
      await trx.insertInto("command_results")
        .values({ scope, idempotency_key: x.meta.idempotencyKey, result: JSON.stringify(result) }).execute()
    }
    return { result, events: stored, replayed: false }
  })

/** Outbox rows for stored events, and a NOTIFY the relay receives when (and only if) this commits. */
export const writeOutbox = async (
  trx: Transaction<Tables>,
  producer: string,
  stored: ReadonlyArray<EventRow>,
  streams: (event: EventRow) => ReadonlyArray<string>
) => {
  const rows = stored.flatMap((e) =>
    streams(e).map((stream) => ({
      producer,
      stream,
      event_position: e.position,
      aggregate_key: `${e.aggregate_type}/${e.aggregate_id}`
    }))
  )
  if (rows.length === 0) return
  await trx.insertInto("outbox").values(rows).execute()
  await sql`select pg_notify(${OUTBOX_CHANNEL}, ${producer})`.execute(trx)
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
        try: () => once(database.db, registry, x),
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

// The consumer side of the backbone as one layer a service configures: which streams, how
// the work is shared, and the projection. Three modes, because the services need all three:
//
//   group          work shared across replicas (Postgres projections, a ledger): a
//                  Postgres projection catches up from the log, then a consumer group follows
//                  the streams; claims, the DLQ and dead members are handled by the group member.
//   every-replica  each replica reads every event without a group (in-memory projections such
//                  a routing table): catch up from the log, then XREAD from the stream position
//                  noted before the catch-up began.
//   stream-only    records that have no log row (e.g. decision records): a group with a decoder of
//                  the service's choosing; records are deduplicated by their id.
//
// At the switch from the log to the stream nothing is lost and nothing applied twice: what
// both deliver is skipped by the projection's per-aggregate checkpoints, and what was
// published before the noted position had committed before the catch-up, which waits for
// every event writer older than itself (see eventstore.ts).
import { Effect, Layer, Metric, Schedule } from "effect"
import type { Redis } from "ioredis"
import type { Envelope } from "../schemas/envelope.ts"
import type { EventRegistry } from "../schemas/registry.ts"
import { verifierFrom } from "./backbone.ts"
import type { ConsumerSpec } from "./config/common.ts"
import { loadSpec } from "./config/load.ts"
import { classifyWith, type Decode, envelopeDecoder, makeConsumer } from "./consumer.ts"
import { Database, isUnavailable } from "./db/database.ts"
import { applyDeliveredToPostgres, catchUpPostgres, LogTampered, type MemoryProjectionRunner, type PgProjection } from "./projection.ts"
import type { Keys } from "./redis/keys.ts"
import { RedisClient } from "./redis/redis.ts"
import type { Verifier } from "./signing.ts"

const handled = Metric.counter("caracal_consumer_events_total", { description: "Stream entries applied by a consumer", incremental: true })
const parked = Metric.counter("caracal_consumer_dead_lettered_total", { description: "Stream entries parked in a dead-letter stream", incremental: true })

interface Common {
  /** Names the consumer in metrics and logs (and, in the group modes, is the group's name). */
  readonly name: string
  readonly streams: (keys: Keys) => ReadonlyArray<string>
  /** This replica's name in a group (default: host and process id). */
  readonly member?: string
}

export type ConsumerDefinition =
  | Common & { readonly mode: "group"; readonly registry: EventRegistry; readonly projection: PgProjection }
  | Common & { readonly mode: "every-replica"; readonly registry: EventRegistry; readonly runner: MemoryProjectionRunner<unknown> }
  | Common & {
    readonly mode: "stream-only"
    readonly decode: Decode<{ readonly id: string }>
    /** Applies a batch of records; must be idempotent by record id (a redelivery after a crash repeats it). */
    readonly handle: (records: ReadonlyArray<{ readonly id: string }>) => Promise<void>
  }

const keysOf = (spec: ConsumerSpec) => ({ STREAMS_HMAC_KEY: spec.STREAMS_HMAC_KEY, STREAMS_HMAC_PREVIOUS_KEYS: spec.STREAMS_HMAC_PREVIOUS_KEYS })

export const Consumer = {
  /**
   * Runs a consumer for as long as the service lives. The spec must have the stream keys
   * (STREAMS_HMAC_KEY, STREAMS_HMAC_PREVIOUS_KEYS): entries are verified with them.
   */
  layer: <S extends ConsumerSpec>(spec: S, def: ConsumerDefinition): Layer.Layer<never, unknown, Database | RedisClient> =>
    Layer.effectDiscard(Effect.gen(function*() {
      const keys = yield* loadSpec(keysOf(spec))
      const verifier = verifierFrom(keys)
      if (!verifier.enabled) yield* Effect.logWarning("STREAMS_HMAC_KEY is not set: stream entries are not verified")
      const database = yield* Database
      const redis = yield* RedisClient
      const streams = def.streams(redis.keys)
      const context = yield* Effect.context<never>()
      const report = (what: string) => (e: unknown) =>
        Effect.runForkWith(context)(Effect.logWarning(`consumer ${def.name}: ${what}`).pipe(Effect.annotateLogs({ error: String(e) })))
      // counted here, reported to the metrics every few seconds: no fiber per entry on the hot path
      const counts = { applied: 0, parked: 0 }
      const count = (n: number) => void (counts.applied += n)
      const report5s = (parkedSoFar: () => number) =>
        Effect.gen(function*() {
          const parkedNow = parkedSoFar()
          if (counts.applied > 0) yield* Metric.update(Metric.withAttributes(handled, { consumer: def.name }), counts.applied)
          if (parkedNow > counts.parked) yield* Metric.update(Metric.withAttributes(parked, { consumer: def.name }), parkedNow - counts.parked)
          counts.applied = 0
          counts.parked = parkedNow
        }).pipe(Effect.repeat(Schedule.spaced("5 seconds")), Effect.forkScoped)

      if (def.mode === "every-replica") {
        // the stream position before the catch-up: everything published later is read from the stream
        const from = yield* untilDone("stream positions", () => lastIds(redis.streams, streams))
        yield* untilDone("catch-up", () => def.runner.catchUp(2000, verifier))
        yield* follow(redis.streams, streams, from, verifier, envelopeDecoder(def.registry), async (e) => {
          if ((await def.runner.apply(e)) === "applied") count(1)
        }, report("apply failed; retrying"))
        yield* report5s(() => 0)
        return
      }

      if (def.mode === "group") {
        yield* untilDone("catch-up", () => catchUpPostgres(database.db, def.registry, def.projection, { verifier }))
      }
      const member = def.mode === "group"
        ? makeConsumer({
          redis: redis.streams,
          streams,
          group: def.name,
          ...(def.member ? { consumer: def.member } : {}),
          registry: def.registry,
          verifier,
          deadLetterStream: redis.keys.deadLetters,
          handle: (e) => applyDeliveredToPostgres(database.db, def.registry, def.projection, [e.envelope]).then(count),
          handleBatch: (events) =>
            applyDeliveredToPostgres(database.db, def.registry, def.projection, events.map((e) => e.envelope)).then(count),
          onError: report("handler failed")
        })
        : recordMember(def, redis.streams, streams, verifier, redis.keys, count, report("handler failed"))
      yield* Effect.acquireRelease(Effect.sync(() => member.run()), (done) => Effect.promise(() => { member.stop(); return done }))
      yield* report5s(() => member.stats.deadLettered)
    }))
}

// Postgres or Redis away while a service starts is an outage, not a reason to die: the
// start-up steps of a consumer are retried (100 ms doubling up to 2 s) until they succeed,
// while the service's routes already answer (503 for what needs the dependency). A log that
// fails verification or holds an event the code cannot read is no outage: the start fails.
const STARTUP_RETRY = Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("2 seconds")])

const causeOf = (e: unknown) => (e as { cause?: unknown }).cause ?? e
const transient = (e: unknown) => {
  const cause = causeOf(e)
  return !(cause instanceof LogTampered) && !(cause instanceof Error && /^cannot (project|fold)/.test(cause.message)) && isUnavailable(cause)
}

const untilDone = <A>(what: string, run: () => Promise<A>) =>
  Effect.tryPromise(run).pipe(
    Effect.tapError((e) =>
      Effect.logWarning(`consumer ${what} failed${transient(e) ? "; retrying" : ""}`).pipe(Effect.annotateLogs({ error: String(causeOf(e)) }))
    ),
    Effect.retry({ schedule: STARTUP_RETRY, while: transient }),
    Effect.mapError(causeOf)
  )

/**
 * A group member for records without log rows. Records this replica handled recently are not
 * handed over again (a record published twice, a redelivery); across replicas and restarts
 * the handler's own idempotency by record id decides.
 */
const recordMember = (
  def: Extract<ConsumerDefinition, { mode: "stream-only" }>,
  redis: Redis,
  streams: ReadonlyArray<string>,
  verifier: Verifier,
  keys: Keys,
  count: (n: number) => void,
  onError: (e: unknown) => void
) => {
  const seen = new Set<string>()
  const handleFresh = async (records: ReadonlyArray<{ readonly id: string }>) => {
    const fresh = records.filter((r, i) => !seen.has(r.id) && records.findIndex((o) => o.id === r.id) === i)
    if (fresh.length > 0) await def.handle(fresh)
    for (const r of fresh) seen.add(r.id)
    while (seen.size > 10_000) seen.delete(seen.values().next().value!)
    count(fresh.length)
  }
  return makeConsumer<{ readonly id: string }>({
    redis,
    streams,
    group: def.name,
    ...(def.member ? { consumer: def.member } : {}),
    decode: def.decode,
    verifier,
    deadLetterStream: keys.deadLetters,
    handle: (e) => handleFresh([e.envelope]),
    handleBatch: (events) => handleFresh(events.map((e) => e.envelope)),
    onError
  })
}

/** The id of each stream's last entry now ("0-0" for an empty or missing stream). */
const lastIds = async (redis: Redis, streams: ReadonlyArray<string>) =>
  Promise.all(streams.map(async (s) => {
    const last = (await redis.xrevrange(s, "+", "-", "COUNT", 1)) as Array<[string, Array<string>]>
    return last[0]?.[0] ?? "0-0"
  }))

/**
 * Reads the streams from the given positions with XREAD (no group: this replica reads every
 * entry) and applies each in order. An entry that fails to apply is retried, never skipped;
 * poison (bad signature, corrupt, unknown version) is skipped and logged — every replica
 * meets the same entry, and the dead-letter stream belongs to groups.
 */
const follow = (
  redis: Redis,
  streams: ReadonlyArray<string>,
  from: ReadonlyArray<string>,
  verifier: Verifier,
  decode: Decode<Envelope>,
  apply: (e: Envelope) => Promise<void>,
  onError: (e: unknown) => void
) =>
  Effect.gen(function*() {
    // XREAD BLOCK holds its connection: a dedicated one keeps other commands flowing
    const reader = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const r = redis.duplicate()
        r.on("error", () => {})
        return r
      }),
      (r) => Effect.sync(() => r.disconnect())
    )
    const ids = [...from]
    const batch = Effect.fn("consumer.follow")(function*() {
      const reply = (yield* Effect.tryPromise(() =>
        reader.xread("COUNT", 500, "BLOCK", 1000, "STREAMS", ...streams, ...ids)
      )) as Array<[string, Array<[string, Array<string>]>]> | null
      for (const [stream, entries] of reply ?? []) {
        const i = streams.indexOf(stream)
        for (const [id, raw] of entries) {
          const c = classifyWith(stream, id, raw, decode, verifier)
          if (c.ok) yield* Effect.tryPromise(() => apply(c.event.envelope))
          else onError(new Error(`skipped ${stream} ${id}: ${c.reason}`))
          ids[i] = id
        }
      }
    })
    yield* batch().pipe(
      Effect.catchCause((cause) => Effect.sync(() => onError(cause)).pipe(Effect.andThen(Effect.sleep("250 millis")))),
      Effect.forever,
      Effect.forkScoped
    )
  })

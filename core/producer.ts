// The producer side of the backbone as one layer a service configures: its name, its event
// registry and where its events go. The layer reads the producer's variables (OUTBOX_*,
// STREAMS_HMAC_KEY, retention), runs commands (`execute`), and for as long as the service
// lives runs the outbox relay under a fenced lease, trims the streams it publishes, prunes
// sent outbox rows and expires idempotency keys.
import { Context, Effect, Layer, Metric, Redacted, Schedule } from "effect"
import { sql } from "kysely"
import type { EventRegistry } from "../schemas/registry.ts"
import type { ProducerSpec } from "./config/common.ts"
import { type ConfigInvalid, loadSpec } from "./config/load.ts"
import type { Values } from "./config/vars.ts"
import {
  type ConcurrencyExhausted,
  type DomainEvent,
  execute,
  type Execution,
  type IdempotencyKeyReused,
  type Outcome,
  type PendingEvent
} from "./command.ts"
import { Database, type DatabaseShape, type DbError } from "./db/database.ts"
import { GroupCommit } from "./group-commit.ts"
import type { Keys } from "./redis/keys.ts"
import { RedisClient } from "./redis/redis.ts"
import { makeRelay } from "./relay.ts"
import { signerFrom } from "./backbone.ts"
import type { SigningKey } from "./signing.ts"
import { trimStream } from "./trim.ts"

/** A command as a service writes it: everything but what the producer itself knows. */
export type Command<S, C, E extends DomainEvent, Err, R> = Omit<
  Execution<S, C, E, Err, R>,
  "producer" | "streams" | "signer" | "keyRetentionHours"
>

export interface ProducerShape {
  readonly name: string
  readonly keys: Keys
  readonly database: DatabaseShape
  readonly execute: <S, C, E extends DomainEvent, Err, R>(
    command: Command<S, C, E, Err, R>
  ) => Effect.Effect<Outcome<R>, Err | IdempotencyKeyReused | DbError | ConcurrencyExhausted>
}

export interface ProducerDefinition {
  /** Owns the outbox rows; one relay per name leads at a time. */
  readonly name: string
  readonly registry: EventRegistry
  /** The streams an event goes to (usually its aggregate type's: `keys.stream(event.aggregateType)`). */
  readonly streams: (keys: Keys) => (event: PendingEvent) => ReadonlyArray<string>
}

export type ProducerVars = Values<ProducerSpec>

/** execute() for a producer, without its background work (tools, tests, benchmarks). */
export const makeProducer = (def: ProducerDefinition, deps: {
  readonly database: DatabaseShape
  readonly keys: Keys
  readonly signer: SigningKey | undefined
  readonly keyRetentionHours?: number
  /** Group commit (core/group-commit.ts); when not given, the database handle's own with the defaults. */
  readonly group?: GroupCommit
}): ProducerShape => {
  const streams = def.streams(deps.keys)
  return {
    name: def.name,
    keys: deps.keys,
    database: deps.database,
    execute: (command) =>
      execute(deps.database, def.registry, {
        ...command,
        producer: def.name,
        streams,
        signer: deps.signer,
        keyRetentionHours: deps.keyRetentionHours
      }, deps.group)
  }
}

const HOUSEKEEPING_EVERY = "60 seconds"

const groupSize = Metric.histogram("caracal_write_group_size", {
  description: "Commands written per group commit",
  boundaries: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
})
const groupSeconds = Metric.histogram("caracal_write_group_seconds", {
  description: "Write latency of a group commit, from send to answer",
  boundaries: Metric.exponentialBoundaries({ start: 0.0005, factor: 2, count: 14 })
})
const writeRefused = Metric.counter("caracal_write_refused_total", {
  description: "Commands refused before they were written (queue full or deadline passed): 503",
  incremental: true
})

const groupsWrittenExactly = Metric.counter("caracal_write_group_exact_total", {
  description: "Groups whose single statement failed on a member's refusal or conflict, then written the exact way (caracal_write_group: each member its own outcome)",
  incremental: true
})

/** The group writer's sizes and latencies, observed in place and reported every second (no fiber per write). */
const reportGroups = (producer: string, group: GroupCommit) =>
  Effect.gen(function*() {
    const o = group.drain()
    const attributes = { producer }
    for (const size of o.sizes) yield* Metric.update(Metric.withAttributes(groupSize, attributes), size)
    for (const seconds of o.latencies) yield* Metric.update(Metric.withAttributes(groupSeconds, attributes), seconds)
    if (o.refused > 0) yield* Metric.update(Metric.withAttributes(writeRefused, attributes), o.refused)
    if (o.atOnceFailed > 0) yield* Metric.update(Metric.withAttributes(groupsWrittenExactly, attributes), o.atOnceFailed)
  }).pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped)

export class Producer extends Context.Service<Producer, ProducerShape>()("caracal/core/Producer") {
  /**
   * The producer of a service whose variable spec has the producer's variables (see
   * `producerVars` in core/config/common.ts): any other spec is a compile error.
   */
  static readonly layer = <S extends ProducerSpec>(spec: S, def: ProducerDefinition): Layer.Layer<Producer, ConfigInvalid, Database | RedisClient> =>
    Layer.effect(Producer, Effect.gen(function*() {
      const vars = yield* loadSpec(producerSpecOf(spec))
      const database = yield* Database
      const redis = yield* RedisClient
      const signer = signerFrom(vars.STREAMS_HMAC_KEY)
      if (signer === undefined) yield* Effect.logWarning("STREAMS_HMAC_KEY is not set: stream messages are unsigned")
      const group = new GroupCommit(database.db, {
        maxSize: vars.WRITE_GROUP_MAX_SIZE,
        windowUs: vars.WRITE_GROUP_WINDOW_US,
        queueMax: vars.WRITE_QUEUE_MAX,
        deadlineMs: vars.WRITE_DEADLINE_MS
      })
      const producer = makeProducer(def, { database, keys: redis.keys, signer, keyRetentionHours: vars.IDEMPOTENCY_RETENTION_HOURS, group })
      yield* reportGroups(def.name, group)

      const context = yield* Effect.context<never>()
      const relay = makeRelay({
        producer: def.name,
        databaseUrl: Redacted.value(vars.DATABASE_URL),
        database,
        redis: redis.streams,
        pollMs: vars.OUTBOX_POLL_MS,
        batchSize: vars.OUTBOX_BATCH_SIZE,
        maxAttempts: vars.OUTBOX_MAX_ATTEMPTS,
        leaseMs: vars.OUTBOX_LEASE_MS,
        signer,
        onError: (e) =>
          Effect.runForkWith(context)(
            Effect.logWarning("relay: publish failed; backing off").pipe(Effect.annotateLogs({ producer: def.name, error: String(e) }))
          )
      })
      yield* Effect.acquireRelease(
        Effect.sync(() => relay.run()),
        (done) => Effect.promise(() => { relay.stop(); return done })
      )
      yield* housekeeping(def.name, database, redis.streams, vars).pipe(
        Effect.catchCause((cause) => Effect.logWarning("producer housekeeping failed").pipe(Effect.annotateLogs({ cause: String(cause) }))),
        Effect.repeat(Schedule.spaced(HOUSEKEEPING_EVERY)),
        Effect.forkScoped
      )
      return producer
    }))
}

/** Only the producer's own variables: the layer reads them itself, typed, from the same environment. */
const producerSpecOf = (spec: ProducerSpec) => ({
  DATABASE_URL: spec.DATABASE_URL,
  OUTBOX_POLL_MS: spec.OUTBOX_POLL_MS,
  OUTBOX_BATCH_SIZE: spec.OUTBOX_BATCH_SIZE,
  OUTBOX_MAX_ATTEMPTS: spec.OUTBOX_MAX_ATTEMPTS,
  OUTBOX_LEASE_MS: spec.OUTBOX_LEASE_MS,
  STREAMS_HMAC_KEY: spec.STREAMS_HMAC_KEY,
  STREAM_RETENTION_HOURS: spec.STREAM_RETENTION_HOURS,
  IDEMPOTENCY_RETENTION_HOURS: spec.IDEMPOTENCY_RETENTION_HOURS,
  WRITE_GROUP_MAX_SIZE: spec.WRITE_GROUP_MAX_SIZE,
  WRITE_GROUP_WINDOW_US: spec.WRITE_GROUP_WINDOW_US,
  WRITE_QUEUE_MAX: spec.WRITE_QUEUE_MAX,
  WRITE_DEADLINE_MS: spec.WRITE_DEADLINE_MS
})

/**
 * Sent outbox rows are not history (the events table is), so they go after a day; each stream
 * this producer published to is trimmed, bounded by every group's acknowledgements; expired
 * idempotency keys are deleted.
 */
const housekeeping = Effect.fn("producer.housekeeping")(function*(
  producer: string,
  database: DatabaseShape,
  redis: RedisClient["Service"]["streams"],
  vars: Pick<ProducerVars, "STREAM_RETENTION_HOURS" | "IDEMPOTENCY_RETENTION_HOURS">
) {
  yield* Effect.tryPromise(async () => {
    await sql`delete from outbox where producer = ${producer} and status = 'sent' and sent_at < now() - interval '1 day'`.execute(database.db)
    await sql`delete from command_results where created_at < now() - make_interval(hours => ${vars.IDEMPOTENCY_RETENTION_HOURS})`.execute(database.db)
    const { rows } = await sql<{ stream: string }>`select distinct stream from outbox where producer = ${producer}
      and created_at > now() - interval '1 day'`.execute(database.db)
    for (const { stream } of rows) await trimStream(redis, stream, vars.STREAM_RETENTION_HOURS * 3_600_000)
  })
})

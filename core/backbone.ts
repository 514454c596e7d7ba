// The backbone as parts of a running service: the outbox relay of a producing service
// and the periodic, acknowledgement-bounded trimming of the streams it publishes.
import { Effect, Layer, Redacted, Schedule } from "effect"
import { sql } from "kysely"
import { ServiceConfig } from "./config/load.ts"
import { Database } from "./db/database.ts"
import { RedisClient } from "./redis/redis.ts"
import { makeRelay } from "./relay.ts"
import { signingKey, type SigningKey, Verifier } from "./signing.ts"
import { trimStream } from "./trim.ts"

interface ProducerVars {
  readonly DATABASE_URL: Redacted.Redacted<string>
  readonly OUTBOX_POLL_MS: number
  readonly OUTBOX_BATCH_SIZE: number
  readonly OUTBOX_MAX_ATTEMPTS: number
  readonly STREAMS_HMAC_KEY: Redacted.Redacted<Buffer> | undefined
  readonly STREAM_RETENTION_HOURS: number
}

interface ConsumerVars {
  readonly STREAMS_HMAC_KEY?: Redacted.Redacted<Buffer> | undefined
  readonly STREAMS_HMAC_PREVIOUS_KEYS?: Redacted.Redacted<ReadonlyArray<Buffer>> | undefined
}

export const signerFrom = (key: Redacted.Redacted<Buffer> | undefined): SigningKey | undefined =>
  key === undefined ? undefined : signingKey(Redacted.value(key))

/** The current key and any being rotated out; an empty verifier accepts unsigned entries. */
export const verifierFrom = (vars: ConsumerVars) =>
  new Verifier([
    ...(vars.STREAMS_HMAC_KEY ? [signingKey(Redacted.value(vars.STREAMS_HMAC_KEY))] : []),
    ...(vars.STREAMS_HMAC_PREVIOUS_KEYS ? Redacted.value(vars.STREAMS_HMAC_PREVIOUS_KEYS).map(signingKey) : [])
  ])

/** Runs this service's outbox relay for as long as the service lives. */
export const RelayLive = (producer: string) =>
  Layer.effectDiscard(Effect.gen(function*() {
    const config = yield* ServiceConfig
    const database = yield* Database
    const redis = yield* RedisClient
    const vars = config.vars as unknown as ProducerVars
    const context = yield* Effect.context<never>()
    const relay = makeRelay({
      producer,
      databaseUrl: Redacted.value(vars.DATABASE_URL),
      database,
      redis: redis.streams,
      pollMs: vars.OUTBOX_POLL_MS,
      batchSize: vars.OUTBOX_BATCH_SIZE,
      maxAttempts: vars.OUTBOX_MAX_ATTEMPTS,
      signer: signerFrom(vars.STREAMS_HMAC_KEY),
      onError: (e) =>
        Effect.runForkWith(context)(
          Effect.logWarning("relay: publish failed; backing off").pipe(Effect.annotateLogs({ producer, error: String(e) }))
        )
    })
    if (vars.STREAMS_HMAC_KEY === undefined) yield* Effect.logWarning("STREAMS_HMAC_KEY is not set: stream messages are unsigned")
    yield* Effect.acquireRelease(
      Effect.sync(() => relay.run()),
      (done) => Effect.promise(() => { relay.stop(); return done })
    )
    // housekeeping once a minute: sent outbox rows are not history (the events table is), so
    // they go after a day; each stream this producer publishes to is trimmed, bounded by every group's acks
    const maxAgeMs = vars.STREAM_RETENTION_HOURS * 3_600_000
    yield* Effect.tryPromise(async () => {
      await sql`delete from outbox where producer = ${producer} and status = 'sent' and sent_at < now() - interval '1 day'`.execute(database.db)
      const { rows } = await sql<{ stream: string }>`select distinct stream from outbox where producer = ${producer}
        and created_at > now() - interval '1 day'`.execute(database.db)
      for (const { stream } of rows) await trimStream(redis.streams, stream, maxAgeMs)
    }).pipe(
      Effect.catchCause(() => Effect.void),
      Effect.repeat(Schedule.spaced("60 seconds")),
      Effect.forkScoped
    )
  }))

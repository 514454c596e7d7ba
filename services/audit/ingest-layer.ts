// The audit's consumer: one group ("audit") over the audit stream (at AUDIT_STREAM_URL) and
// every domain stream, shared by all audit replicas through the consumer layer's group
// member (core/consumer.ts: claims of a crashed replica's entries, the DLQ after
// AUDIT_MAX_DELIVERIES, verification with STREAMS_HMAC_KEY). Postgres away is waited out
// inside the handler instead of failing deliveries: an outage must not push good records
// into the DLQ. What the group acknowledged is trimmed from the audit stream.
import { Cause, Effect, Exit, Layer, Metric, Redacted, Schedule, Schema } from "effect"
import { Redis } from "ioredis"
import { v7 as uuidv7 } from "uuid"
import { makeAuditLog } from "../../core/audit-log.ts"
import { signerFrom, verifierFrom } from "../../core/backbone.ts"
import { loadSpec, ServiceConfig } from "../../core/config/load.ts"
import { type Decode, type DeadLettered, defaultConsumerName, makeConsumer, type ReceivedEvent } from "../../core/consumer.ts"
import { Database, isUnavailable } from "../../core/db/database.ts"
import type { Keys } from "../../core/redis/keys.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { trimStream } from "../../core/trim.ts"
import { decodeEnvelope } from "../../schemas/envelope.ts"
import { decodeAuditRecord } from "../../schemas/audit-record.ts"
import { auditSpec } from "./config.ts"
import { health, measure } from "./health.ts"
import { type Incoming, ingest, type IngestDeps, zoneDirectory } from "./ingest.ts"
import { auditKeys } from "./keys.ts"

export const GROUP = "audit"

/** Every domain stream (CONTRACTS.md: the api's, the sts's and the coordinator's aggregate types, and revocations). */
export const DOMAIN_TYPES = [
  "zone", "application", "resource", "provider", "credential", "binding", "policy", "policy_set", "grant",
  "zone_key", "agent", "delegation", "revocation"
] as const

export const domainStreams = (keys: Keys) => DOMAIN_TYPES.map((t) => keys.stream(t))

const typeOfStream = (stream: string) => /\{([^}.]+)(?:\.\d+)?\}/.exec(stream)?.[1] ?? stream

const recordDecoder: Decode<Record<string, unknown>> = (json) => {
  const r = decodeAuditRecord(json)
  return r._tag === "Success" ? { ok: true, value: json as Record<string, unknown> } : { ok: false, reason: "invalid_audit_record" }
}
const eventDecoder: Decode<Record<string, unknown>> = (json) => {
  const r = decodeEnvelope(json)
  return r._tag === "Success" ? { ok: true, value: json as Record<string, unknown> } : { ok: false, reason: "invalid_envelope" }
}

const appended = Metric.counter("caracal_audit_records_total", { description: "Records appended to audit chains", incremental: true })
const duplicates = Metric.counter("caracal_audit_duplicates_total", { description: "Redelivered records already chained (no-ops)", incremental: true })
const tamperedTotal = Metric.counter("caracal_audit_tampered_total", {
  description: "Records whose id was already chained with other content (dead-lettered, alert raised)",
  incremental: true
})
const lagGauge = Metric.gauge("caracal_audit_consumer_lag", { description: "Entries not yet delivered to the audit group, all streams" })
const pendingAge = Metric.gauge("caracal_audit_oldest_pending_seconds", { description: "Age of the oldest delivered, unacknowledged entry" })
const dlqSize = Metric.gauge("caracal_audit_dlq_entries", { description: "Entries in the audit group's dead-letter streams" })

class IngestFailed extends Schema.TaggedError<IngestFailed>()("IngestFailed", { cause: Schema.Defect() }) {}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export const IngestLive = Layer.effectDiscard(Effect.gen(function*() {
  const vars = yield* loadSpec(auditSpec)
  const config = yield* ServiceConfig
  const keys = yield* auditKeys(vars, config.mode)
  const database = yield* Database
  const redis = yield* RedisClient
  const verifier = verifierFrom(vars)
  if (!verifier.enabled) yield* Effect.logWarning("STREAMS_HMAC_KEY is not set: stream entries are not verified")
  const sameRedis = Redacted.value(vars.AUDIT_STREAM_URL) === Redacted.value(vars.REDIS_URL)
  const auditRedis = sameRedis ? redis.streams : yield* Effect.acquireRelease(
    Effect.promise(async () => {
      const r = new Redis(Redacted.value(vars.AUDIT_STREAM_URL), {
        lazyConnect: true,
        retryStrategy: (t) => Math.min(t * 100, 2000),
        ...(vars.REDIS_PASSWORD ? { password: Redacted.value(vars.REDIS_PASSWORD) } : {})
      })
      r.on("error", () => {})
      await r.connect().catch(() => {}) // unreachable now: the consumer's loop retries
      return r
    }),
    (r) => Effect.promise(() => r.quit().catch(() => r.disconnect()))
  )
  const auditStream = redis.keys.stream("audit")
  const alerts = makeAuditLog(auditRedis, redis.keys, signerFrom(vars.STREAMS_HMAC_KEY))
  const context = yield* Effect.context<never>()
  const run = <A>(e: Effect.Effect<A, unknown>) => Effect.runPromiseWith(context)(e).catch(() => undefined)
  let closing = false
  const deps: IngestDeps = {
    db: database.db,
    key: keys.hmacKey,
    signer: keys.signer,
    zones: zoneDirectory(database.db),
    now: () => new Date()
  }

  /** An alert record on the audit stream: it is chained (in `_audit`) like every other record. */
  const alert = (kind: string, reason: string) =>
    run(alerts.append({
      zone_id: null, source: "audit", kind, decision: "error", reason: reason.slice(0, 500), request_id: null, trace_id: null,
      client_id: null, agent_session_id: null, delegation_edge_id: null, resource: null, scope: null, jti: null, status: null, latency_ms: null,
      id: uuidv7()
    }))

  const onDeadLetter = async (d: DeadLettered) => {
    const payload = d.fields[d.fields.indexOf("e") + 1] ?? ""
    if (d.stream === auditStream && payload.includes("\"source\":\"audit\"")) return // never an alert about an alert
    await alert(`alert.dead_letter`, `${d.reason}: ${d.stream} entry ${d.id} after ${d.deliveries} deliveries`)
  }

  const ingestBatch = Effect.fn("audit.ingest")(function*(items: ReadonlyArray<Incoming>) {
    yield* Effect.annotateCurrentSpan("records", items.length)
    return yield* Effect.tryPromise({ try: () => ingest(deps, items), catch: (cause) => new IngestFailed({ cause }) })
  })

  /** Appends a batch, waiting out Postgres outages (never counted as failed deliveries). */
  const handle = (origin: Incoming["origin"]) => async (events: ReadonlyArray<ReceivedEvent<Record<string, unknown>>>) => {
    const items: Array<Incoming> = events.map((e) => ({ origin, stream: typeOfStream(e.stream), body: e.envelope }))
    for (let attempt = 0;; attempt++) {
      const exit = await Effect.runPromiseExitWith(context)(ingestBatch(items))
      if (Exit.isFailure(exit)) {
        const failure = Cause.findErrorOption(exit.cause)
        const cause = failure._tag === "Some" ? failure.value.cause : Cause.squash(exit.cause)
        if (closing || !isUnavailable(cause)) throw cause
        if (attempt % 10 === 0) await run(Effect.logWarning("audit: Postgres unavailable; retrying the batch").pipe(Effect.annotateLogs({ error: String(cause) })))
        await sleep(Math.min(100 * 2 ** attempt, 2000))
        continue
      }
      {
        const r = exit.value
        await run(Metric.update(appended, r.appended))
        await run(Metric.update(duplicates, r.duplicates))
        for (const t of r.tampered) {
          const e = events.find((x) => x.envelope === t.incoming.body)!
          await redis.streams.multi().xadd(redis.keys.deadLetters(e.stream), "*", "reason", t.reason, "stream", e.stream, "id", e.entryId,
            "group", GROUP, "consumer", "audit", "at", new Date().toISOString(), "deliveries", "1", "fields", JSON.stringify(e.raw ?? [])).exec()
          await run(Metric.update(tamperedTotal, 1))
          await alert("alert.tamper", `${t.reason}: id ${String(t.incoming.body.id)} on ${e.stream} entry ${e.entryId}`)
        }
        return
      }
    }
  }

  const member = (redisConn: Redis, streams: ReadonlyArray<string>, origin: Incoming["origin"], decode: Decode<Record<string, unknown>>, name: string) => {
    const h = handle(origin)
    return makeConsumer<Record<string, unknown>>({
      redis: redisConn,
      streams,
      group: GROUP,
      consumer: name,
      decode,
      verifier,
      deadLetterStream: redis.keys.deadLetters,
      maxDeliveries: vars.AUDIT_MAX_DELIVERIES,
      claimIdleMs: vars.AUDIT_CLAIM_IDLE_MS,
      count: 500,
      handle: (e) => h([e]),
      handleBatch: h,
      onDeadLetter,
      onError: (e) => void run(Effect.logWarning("audit: consumer error").pipe(Effect.annotateLogs({ error: String(e) })))
    })
  }
  // two members on the audit stream: one reads, verifies and prepares its batch while the
  // other's is in Postgres (a chain's head lock still takes their batches one at a time)
  const me = defaultConsumerName()
  const members = [
    member(auditRedis, [auditStream], "record", recordDecoder, `${me}-a`),
    member(auditRedis, [auditStream], "record", recordDecoder, `${me}-b`),
    member(redis.streams, domainStreams(redis.keys), "event", eventDecoder, me)
  ]
  for (const m of members) {
    yield* Effect.acquireRelease(Effect.sync(() => m.run()), (done) =>
      Effect.promise(() => {
        closing = true
        m.stop()
        return done
      }))
  }
  health.running = true

  // trimming past what the group acknowledged, and the health figures /ready and /metrics read
  const domain = domainStreams(redis.keys)
  yield* Effect.promise(async () => {
    await trimStream(auditRedis, auditStream, 0)
    const a = await measure(auditRedis, GROUP, [auditStream], redis.keys.deadLetters)
    const d = await measure(redis.streams, GROUP, domain, redis.keys.deadLetters)
    Object.assign(health, {
      lag: a.lag + d.lag,
      oldestPendingMs: Math.max(a.oldestPendingMs, d.oldestPendingMs),
      deadLetters: a.deadLetters + d.deadLetters,
      measuredAt: Date.now()
    })
  }).pipe(
    Effect.andThen(Effect.suspend(() =>
      Effect.all([
        Metric.update(lagGauge, health.lag),
        Metric.update(pendingAge, health.oldestPendingMs / 1000),
        Metric.update(dlqSize, health.deadLetters)
      ])
    )),
    Effect.catchCause((cause) => Effect.logWarning("audit: health/trim round failed").pipe(Effect.annotateLogs({ cause: String(cause) }))),
    Effect.repeat(Schedule.spaced("5 seconds")),
    Effect.forkScoped
  )
}))

// ZoneKeys: each zone's ES256 signing keys, for the token endpoint (signingKey) and the JWKS
// route (jwks). Keys are an event-sourced ring per zone (key-ring.ts) written through the
// sts's producer; the public halves are projected inline into sts_zone_keys, the private
// halves sealed under ZONE_KEK into sts_zone_key_secrets in the same statement.
//
// Opened signing keys are cached in memory (the seed's 15 minutes), which is the hazard this
// module is built around: a replica must not go on signing with a key another replica has
// retired. Three things bound a cached key:
//   - eviction on every key event of its zone: this replica's own commands at once, other
//     replicas' through the `zone_key` stream, read by every replica (no group);
//   - an entry lives at most ZONE_KEY_NEXT_LEAD_S (when shorter than 15 minutes), and never
//     past the activation of a `next` key it saw: any rotation is published for the lead time
//     before it activates, so an entry loaded before the rotation expires before the new key
//     signs and the reload sees it — this holds even while the stream is unavailable;
//   - a load that finds a due activation or removal advances the ring itself before answering,
//     so a slow ticker never leaves an overdue key signing.
// An eviction that arrives while a load is running cancels that load's entry (a load started
// before a rotation must not cache what it read).
import { Context, Effect, Layer, Schedule, Schema } from "effect"
import type { KeyObject } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import type { CommandMeta, ConcurrencyExhausted } from "../../core/command.ts"
import { ConfigInvalid, loadSpec } from "../../core/config/load.ts"
import { Consumer } from "../../core/consumer-layer.ts"
import { Database, type DbError } from "../../core/db/database.ts"
import { MemoryProjectionRunner } from "../../core/projection.ts"
import { Producer } from "../../core/producer.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { stsSpec } from "./config.ts"
import { events } from "./events.ts"
import { checkKeks, keksFrom, resealUnderCurrent } from "./key-kek.ts"
import { keyChangesFor } from "./key-projection.ts"
import { markProvisioned, pendingZones, zonesConsumer } from "./key-provisioning.ts"
import { activeKey, type KeyRingCommand, type KeyRingState, keyRing, nextKey, type PublicJwk } from "./key-ring.ts"
import { dueZones, generateZoneKey, type GeneratedKey, openSecret, publishedKeys, secretChange, SecretNotOpened, zoneInLog } from "./key-store.ts"

/** What signs a zone's mandates: jose's SignJWT takes the KeyObject with alg ES256. */
export interface ZoneSigningKey {
  readonly kid: string
  readonly privateKey: KeyObject
}

/** The zone's active key exists but cannot be used (its sealed row does not open): never replaced silently. */
export class ZoneKeyUnavailable extends Schema.TaggedError<ZoneKeyUnavailable>()("ZoneKeyUnavailable", {
  zoneId: Schema.String,
  kid: Schema.String,
  reason: Schema.Literals(["missing_secret", "unknown_kek", "unsealable", "key_mismatch"])
}) {}

export type ZoneKeysError = DbError | ConcurrencyExhausted | ZoneKeyUnavailable

export interface TickReport {
  /** Zones whose ring had a due activation or removal. */
  readonly advanced: number
  /** Zones noted by the zone consumer that got their first key. */
  readonly provisioned: number
}

export interface ZoneKeysShape {
  /** The zone's first key (active at once) unless it has keys; answers the active kid. Idempotent. */
  readonly ensureZone: (zoneId: string) => Effect.Effect<{ readonly kid: string }, ZoneKeysError>
  /** A new `next` key, active after ZONE_KEY_NEXT_LEAD_S; while one is pending, that one. */
  readonly rotate: (zoneId: string) => Effect.Effect<{ readonly kid: string; readonly activatesAt: string }, ZoneKeysError>
  /** The zone's active key, opened (cached); undefined when the zone has no active key. */
  readonly signingKey: (zoneId: string) => Effect.Effect<ZoneSigningKey | undefined, ZoneKeysError>
  /**
   * The zone's active key when the cache holds it fresh, without running anything: the token
   * endpoint asks for it on every exchange, and a cache hit is most of them. undefined: ask
   * signingKeyOrProvision.
   */
  readonly cachedSigningKey: (zoneId: string) => ZoneSigningKey | undefined
  /**
   * signingKey, and when the zone has none but the api's log has the zone (created, not
   * archived), provisions it first: read-your-writes for a zone created a moment ago.
   * undefined: the zone is unknown or archived, and has no key.
   */
  readonly signingKeyOrProvision: (zoneId: string) => Effect.Effect<ZoneSigningKey | undefined, ZoneKeysError>
  /** The published public keys (next, active, retired), oldest first: `kid`, `alg`, `use`, no private member. */
  readonly jwks: (zoneId: string) => Effect.Effect<ReadonlyArray<PublicJwk>, DbError>
  /** jwks, provisioning a zone that is in the log without keys; undefined: the zone is unknown (or archived without keys). */
  readonly jwksOrProvision: (zoneId: string) => Effect.Effect<ReadonlyArray<PublicJwk> | undefined, ZoneKeysError>
  /** Advances the rings with due keys (one indexed query) and provisions zones the consumer noted. */
  readonly tick: () => Effect.Effect<TickReport, DbError>
  /** Counters of the signing-key cache, for tests and diagnostics. */
  readonly stats: () => { readonly cached: number; readonly loads: number; readonly evictions: number }
}

/** The seed's rule: an opened signing key is kept at most this long. */
const CACHE_MS = 15 * 60_000
const MAX_CACHED_ZONES = 10_000
const TICK_EVERY = "1 second"
const TICK_BATCH = 100

const SYSTEM = { kind: "system", id: "sts" } as const

const make = Effect.gen(function*() {
  const vars = yield* loadSpec(stsSpec)
  const database = yield* Database
  const { execute } = yield* Producer
  const db = database.db
  // A verifier may hold a JWKS for JWKS_MAX_AGE_S: a key that signed before being published that
  // long would fail there. Refused rather than clamped: the operator chose both numbers.
  if (vars.ZONE_KEY_NEXT_LEAD_S < vars.JWKS_MAX_AGE_S) {
    return yield* new ConfigInvalid({
      variable: "ZONE_KEY_NEXT_LEAD_S",
      rule: `must be at least JWKS_MAX_AGE_S (${vars.JWKS_MAX_AGE_S}): a rotated-in key must be published that long before it signs`
    })
  }
  const keks = yield* keksFrom(vars)
  const check = yield* checkKeks(db, keks)
  const leadMs = vars.ZONE_KEY_NEXT_LEAD_S * 1000
  const entryMs = Math.min(CACHE_MS, Math.max(1000, leadMs))

  // ---------------------------------------------------------------- the cache
  const cache = new Map<string, { readonly key: ZoneSigningKey; readonly expiresAt: number }>()
  /** A token per load in flight: an eviction drops it, and the load then caches nothing. */
  const loading = new Map<string, symbol>()
  const counters = { loads: 0, evictions: 0 }
  const evict = (zoneId: string) => {
    counters.evictions++
    cache.delete(zoneId)
    loading.delete(zoneId)
  }

  // ---------------------------------------------------------------- commands
  const metaFor = (zoneId: string, now: Date): CommandMeta => ({ zoneId, actor: SYSTEM, now, correlationId: uuidv7() })

  const run = (zoneId: string, command: KeyRingCommand, now: Date, fresh?: GeneratedKey) =>
    execute({
      aggregate: keyRing,
      id: zoneId,
      command,
      meta: metaFor(zoneId, now),
      projectRows: (_state, pending, meta) => {
        const rows = pending.flatMap((e) => keyChangesFor({ type: e.type, zoneId, occurredAt: meta.now.toISOString(), data: e.data }))
        // the secret only with the event that publishes its key: a retry that decided nothing writes neither
        const created = fresh !== undefined && pending.some((e) => e.type === "ZoneKeyCreated" && (e.data as { kid: string }).kid === fresh.kid)
        return created ? [...rows, secretChange(keks.current, zoneId, fresh)] : rows
      },
      result: (state: KeyRingState) => state
    }).pipe(
      // a ring refusal or a reused idempotency key is a bug here (fresh keys, no keys sent): a defect
      Effect.catchTags({ KeyRingRejected: Effect.die, IdempotencyKeyReused: Effect.die }),
      Effect.tap((outcome) => Effect.sync(() => outcome.events.length > 0 && evict(zoneId)))
    )

  const freshKey = Effect.promise(() => generateZoneKey())

  const activeKid = (zoneId: string) =>
    database.query(async (db) => (await publishedKeys(db, zoneId)).find((k) => k.status === "active")?.kid)

  const ensureZone = Effect.fn("ZoneKeys.ensureZone")(function*(zoneId: string) {
    const known = yield* activeKid(zoneId)
    if (known !== undefined) return { kid: known }
    const key = yield* freshKey
    const outcome = yield* run(zoneId, { _tag: "ProvisionKey", key }, new Date(), key)
    const active = activeKey(outcome.result)
    if (active === undefined) return yield* Effect.die(new Error(`zone ${zoneId} has keys but none active`))
    return { kid: active.kid }
  })

  const rotate = Effect.fn("ZoneKeys.rotate")(function*(zoneId: string) {
    yield* ensureZone(zoneId)
    const key = yield* freshKey
    const outcome = yield* run(zoneId, { _tag: "RotateKey", key, leadSeconds: vars.ZONE_KEY_NEXT_LEAD_S }, new Date(), key)
    const next = nextKey(outcome.result)
    if (next === undefined) return yield* Effect.die(new Error(`zone ${zoneId}: rotation left no next key`))
    yield* Effect.logInfo("zone key rotation started").pipe(
      Effect.annotateLogs({ zone_id: zoneId, kid: next.kid, activates_at: next.activatesAt, new: next.kid === key.kid })
    )
    return { kid: next.kid, activatesAt: next.activatesAt }
  })

  const advance = (zoneId: string, now: Date) =>
    run(zoneId, { _tag: "AdvanceRing", retiredKeepSeconds: vars.ZONE_KEY_RETIRED_KEEP_S }, now).pipe(
      Effect.tap((o) =>
        o.events.length === 0 ? Effect.void : Effect.logInfo("zone key ring advanced").pipe(
          Effect.annotateLogs({ zone_id: zoneId, events: o.events.map((e) => `${e.type}:${(e.data as { kid: string }).kid}`).join(" ") })
        )
      )
    )

  // ---------------------------------------------------------------- reads
  /** Reads and opens the active key; caches it unless an eviction came while it was read. */
  const load = (zoneId: string, token: symbol) =>
    Effect.gen(function*() {
      counters.loads++
      const now = new Date()
      let keys = yield* database.query((db) => publishedKeys(db, zoneId))
      if (keys.some((k) => k.due_at !== null && k.due_at.getTime() <= now.getTime())) {
        yield* advance(zoneId, now)
        // our own advance evicted; what is read from here on is newer than it
        loading.set(zoneId, token)
        keys = yield* database.query((db) => publishedKeys(db, zoneId))
      }
      const active = keys.find((k) => k.status === "active")
      if (active === undefined) return undefined
      if (active.secret === null) return yield* new ZoneKeyUnavailable({ zoneId, kid: active.kid, reason: "missing_secret" })
      const secret = active.secret
      const privateKey = yield* Effect.try({
        try: () => openSecret(keks, secret, active.public_jwk),
        catch: (e) => new ZoneKeyUnavailable({ zoneId, kid: active.kid, reason: e instanceof SecretNotOpened ? e.reason : "unsealable" })
      })
      const key: ZoneSigningKey = { kid: active.kid, privateKey }
      const next = keys.find((k) => k.status === "next")
      const expiresAt = Math.min(Date.now() + entryMs, next?.activates_at.getTime() ?? Number.POSITIVE_INFINITY)
      if (loading.get(zoneId) === token) {
        cache.delete(zoneId)
        cache.set(zoneId, { key, expiresAt })
        while (cache.size > MAX_CACHED_ZONES) cache.delete(cache.keys().next().value!)
      }
      return key
    })

  const cachedSigningKey = (zoneId: string): ZoneSigningKey | undefined => {
    const hit = cache.get(zoneId)
    return hit !== undefined && hit.expiresAt > Date.now() ? hit.key : undefined
  }

  const signingKey = Effect.fn("ZoneKeys.signingKey")(function*(zoneId: string) {
    const cached = cachedSigningKey(zoneId)
    if (cached !== undefined) return cached
    const hit = cache.get(zoneId)
    if (hit !== undefined) cache.delete(zoneId)
    const token = Symbol(zoneId)
    loading.set(zoneId, token)
    return yield* load(zoneId, token).pipe(
      Effect.tapError((e) =>
        e._tag === "ZoneKeyUnavailable"
          ? Effect.logError("zone signing key cannot be used").pipe(Effect.annotateLogs({ zone_id: zoneId, kid: e.kid, reason: e.reason }))
          : Effect.void
      ),
      Effect.ensuring(Effect.sync(() => loading.get(zoneId) === token && loading.delete(zoneId)))
    )
  })

  const signingKeyOrProvision = Effect.fn("ZoneKeys.signingKeyOrProvision")(function*(zoneId: string) {
    const key = yield* signingKey(zoneId)
    if (key !== undefined) return key
    if ((yield* database.query((db) => zoneInLog(db, zoneId))) !== "active") return undefined
    yield* ensureZone(zoneId)
    return yield* signingKey(zoneId)
  })

  const jwks = Effect.fn("ZoneKeys.jwks")(function*(zoneId: string) {
    const keys = yield* database.query((db) => publishedKeys(db, zoneId))
    return keys.map((k) => k.public_jwk)
  })

  const jwksOrProvision = Effect.fn("ZoneKeys.jwksOrProvision")(function*(zoneId: string) {
    const keys = yield* jwks(zoneId)
    if (keys.length > 0) return keys
    if ((yield* database.query((db) => zoneInLog(db, zoneId))) !== "active") return undefined
    yield* ensureZone(zoneId)
    return yield* jwks(zoneId)
  })

  // one zone's failure (logged) must not hold the others back
  const each = (zones: ReadonlyArray<string>, what: string, f: (zoneId: string) => Effect.Effect<unknown, unknown>) =>
    Effect.forEach(zones, (zoneId) =>
      f(zoneId).pipe(
        Effect.as(1),
        Effect.catchCause((cause) =>
          Effect.logWarning(`zone keys: ${what} failed`).pipe(Effect.annotateLogs({ zone_id: zoneId, cause: String(cause) }), Effect.as(0))
        )
      ), { concurrency: 4 }).pipe(Effect.map((done) => done.reduce((a, b) => a + b, 0)))

  const tick = Effect.fn("ZoneKeys.tick")(function*() {
    const now = new Date()
    const due = yield* database.query((db) => dueZones(db, now, TICK_BATCH))
    const advanced = yield* each(due, "advance", (zoneId) => advance(zoneId, now))
    const pending = yield* database.query((db) => pendingZones(db, TICK_BATCH))
    const provisioned = yield* each(pending, "provision", (zoneId) =>
      ensureZone(zoneId).pipe(Effect.andThen(database.query((db) => markProvisioned(db, zoneId)))))
    return { advanced, provisioned }
  })

  // ---------------------------------------------------------------- other replicas' key events
  // Every replica reads the zone_key stream from its end now (no group: each must evict its own
  // cache). Nothing before the start matters, since the cache starts empty: no catch-up.
  class Evictions extends MemoryProjectionRunner<null> {
    override async catchUp(): Promise<number> {
      return 0
    }
    override async apply(e: Envelope) {
      evict(e.aggregate.id)
      return "applied" as const
    }
  }
  yield* Layer.build(Consumer.layer(stsSpec, {
    mode: "every-replica",
    name: "sts-zone-key-cache",
    streams: (keys) => [keys.stream(keyRing.type)],
    registry: events,
    runner: new Evictions({ name: "sts-zone-key-cache", handles: new Set(), apply: () => {}, reset: () => {} }, null, db, events) as MemoryProjectionRunner<unknown>
  }))

  if (check.sealedUnderPrevious) {
    // in the background: the keys open meanwhile with the previous KEK they were sealed under
    yield* resealUnderCurrent(db, keks).pipe(
      Effect.tap((r) => Effect.logInfo("zone keys re-sealed under ZONE_KEK").pipe(Effect.annotateLogs({ resealed: r.resealed, failed: r.failed }))),
      Effect.catchCause((cause) => Effect.logWarning("zone keys: re-seal failed; retried at the next start").pipe(Effect.annotateLogs({ cause: String(cause) }))),
      Effect.forkScoped
    )
  }

  yield* Effect.logInfo("zone keys ready").pipe(Effect.annotateLogs({
    kek_id: keks.currentId,
    previous_keks: keks.byId.size - 1,
    next_lead_s: vars.ZONE_KEY_NEXT_LEAD_S,
    retired_keep_s: vars.ZONE_KEY_RETIRED_KEEP_S
  }))
  return ZoneKeys.of({
    ensureZone,
    rotate,
    signingKey,
    cachedSigningKey,
    signingKeyOrProvision,
    jwks,
    jwksOrProvision,
    tick,
    stats: () => ({ cached: cache.size, loads: counters.loads, evictions: counters.evictions })
  })
})

export class ZoneKeys extends Context.Service<ZoneKeys, ZoneKeysShape>()("caracal/sts/ZoneKeys") {
  /**
   * The service, for the routes and the token endpoint. Refuses to build (the sts does not
   * start) when ZONE_KEK opens no sealed key, or ZONE_KEY_NEXT_LEAD_S < JWKS_MAX_AGE_S.
   */
  static readonly layer: Layer.Layer<ZoneKeys, unknown, Database | RedisClient | Producer> = Layer.effect(ZoneKeys, make)

  /** The ticker (activations, removals, pending first keys; every second) and the zone consumer. */
  static readonly background: Layer.Layer<never, unknown, ZoneKeys | Database | RedisClient> = Layer.mergeAll(
    Layer.effectDiscard(Effect.gen(function*() {
      const keys = yield* ZoneKeys
      yield* keys.tick().pipe(
        Effect.catchCause((cause) => Effect.logWarning("zone key tick failed; retrying").pipe(Effect.annotateLogs({ cause: String(cause) }))),
        Effect.repeat(Schedule.spaced(TICK_EVERY)),
        Effect.forkScoped
      )
    })),
    Consumer.layer(stsSpec, zonesConsumer)
  )
}

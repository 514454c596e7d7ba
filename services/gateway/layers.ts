// The gateway assembled: the in-memory projections every replica keeps (the api's directory:
// resources, bindings, applications, zones, grants, credentials; and the revocations), the
// consumers that keep them current, the periodic reload that repairs anything a stream
// missed, and the proxy (a Front handler: it takes every request but /health, /ready, /metrics).
import { Context, Effect, Layer, Metric, Redacted, Schedule } from "effect"
import { Redis } from "ioredis"
import { AuditLog, auditLogFromConfig } from "../../core/audit-log.ts"
import { type Loaded, ServiceConfig } from "../../core/config/load.ts"
import { Consumer } from "../../core/consumer-layer.ts"
import { Database } from "../../core/db/database.ts"
import { addReadyCheck, Front } from "../../core/http/server.ts"
import { makeMandateVerifier } from "../../core/mandate/verify.ts"
import { dbOfUrl, RedisClient } from "../../core/redis/redis.ts"
import { DIRECTORY_TYPES, type Directory, makeDirectory } from "../api/directory.ts"
import { events as apiRegistry } from "../api/events.ts"
import { events as allEvents } from "../events.ts"
import { gatewaySpec } from "./config.ts"
import { makeCredentialCache } from "./credentials.ts"
import { makeProxy } from "./proxy.ts"
import { makeReplayGuard } from "./replay.ts"
import { parseAllowlist } from "./upstream-guard.ts"
import { makeRevocations, REVOCATION_STREAM_TYPE, type Revocations } from "./revocations.ts"

type GatewayVars = Loaded<typeof gatewaySpec>["vars"]
const varsOf = Effect.map(Effect.service(ServiceConfig), (c) => (c as unknown as Loaded<typeof gatewaySpec>).vars as GatewayVars)

/** Passes once the projection has read the whole log: a replica is not ready before. */
const caughtUp = (runner: { readonly caughtUp: boolean }) => Effect.suspend(() => (runner.caughtUp ? Effect.void : Effect.fail("catching up")))

export class GatewayDirectory extends Context.Service<GatewayDirectory, Directory>()("caracal/gateway/Directory") {
  static readonly layer = Layer.effect(GatewayDirectory, Effect.gen(function*() {
    const directory = makeDirectory((yield* Database).db)
    const live = (m: Map<string, { readonly live: boolean }>) => {
      let n = 0
      for (const e of m.values()) if (e.live) n++
      return n
    }
    yield* addReadyCheck({
      name: "bindings",
      check: caughtUp(directory.runner),
      detail: () => ({ bindings: live(directory.runner.state.bindings), resources: live(directory.runner.state.resources) })
    })
    return directory
  }))
}

export class GatewayRevocations extends Context.Service<GatewayRevocations, Revocations>()("caracal/gateway/Revocations") {
  static readonly layer = Layer.effect(GatewayRevocations, Effect.gen(function*() {
    const revocations = makeRevocations((yield* Database).db)
    yield* addReadyCheck({
      name: "revocations",
      check: caughtUp(revocations.runner),
      detail: () => Object.fromEntries([...revocations.runner.state.revoked].map(([kind, ids]) => [kind, ids.size]))
    })
    return revocations
  }))
}

/**
 * Every replica follows the api's streams into its directory and the revocation stream into
 * its revocations; every BINDINGS_RELOAD_MS the directory reads the log again from where its
 * last read ended, so an entry a stream lost (trimmed before it was read, a reader that was
 * away) is applied anyway. Revoked sessions and edges are forgotten once no mandate they
 * could have issued is alive.
 */
export const GatewayBackground = Layer.unwrap(Effect.gen(function*() {
  const directory = yield* GatewayDirectory
  const revocations = yield* GatewayRevocations
  const vars = yield* varsOf
  const reload = Layer.effectDiscard(
    Effect.tryPromise(() => directory.runner.catchUp()).pipe(
      Effect.catchCause((cause) => Effect.logWarning("bindings reload failed").pipe(Effect.annotateLogs({ cause: String(cause) }))),
      Effect.repeat(Schedule.spaced(`${vars.BINDINGS_RELOAD_MS} millis`)),
      Effect.delay(`${vars.BINDINGS_RELOAD_MS} millis`),
      Effect.forkScoped
    )
  )
  const forget = Layer.effectDiscard(
    Effect.sync(() => revocations.forgetOld(Date.now())).pipe(Effect.repeat(Schedule.spaced("1 minute")), Effect.forkScoped)
  )
  return Layer.mergeAll(
    Consumer.layer(gatewaySpec, {
      mode: "every-replica",
      name: "gateway-directory",
      streams: (keys) => DIRECTORY_TYPES.map((t) => keys.stream(t)),
      registry: apiRegistry,
      runner: directory.runner as never
    }),
    Consumer.layer(gatewaySpec, {
      mode: "every-replica",
      name: "gateway-revocations",
      streams: (keys) => [keys.stream(REVOCATION_STREAM_TYPE)],
      registry: allEvents,
      runner: revocations.runner as never
    }),
    reload,
    forget
  )
}))

const outcomes = Metric.counter("caracal_gateway_requests_total", { description: "Governed requests by decision and reason", incremental: true })

/** The db1 connection the replay check and the budgets use: fails fast while Redis is away (fail closed). */
const claimsConnection = (vars: GatewayVars) =>
  Effect.acquireRelease(
    Effect.tryPromise(async () => {
      const r = new Redis(Redacted.value(vars.REDIS_URL), {
        db: 1,
        lazyConnect: true,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 1,
        // concurrent requests' claims leave in one write
        enableAutoPipelining: true,
        retryStrategy: (times) => Math.min(times * 100, 2000),
        ...(vars.REDIS_PASSWORD === undefined ? {} : { password: Redacted.value(vars.REDIS_PASSWORD) })
      })
      r.on("error", () => {})
      await r.connect()
      return r
    }),
    (r) => Effect.promise(() => r.quit().catch(() => r.disconnect()))
  )

/** The proxy as the service's Front handler. */
export const GatewayFront = Layer.effect(Front, Effect.gen(function*() {
  const vars = yield* varsOf
  const config = yield* ServiceConfig
  const redis = yield* RedisClient
  const directory = yield* GatewayDirectory
  const revocations = yield* GatewayRevocations
  const audit = yield* AuditLog
  const limits = yield* claimsConnection(vars)
  const stsUrl = vars.STS_URL.replace(/\/$/, "")
  const verifier = makeMandateVerifier({
    jwksBaseUrl: stsUrl,
    issuer: vars.ISSUER_URL.replace(/\/$/, ""),
    // replaced per request by the resource the request names
    accept: { use: "per_call", resource: "" },
    requireTyp: true
  })
  const counts = new Map<string, number>()
  const flush = Effect.gen(function*() {
    for (const [key, n] of counts) {
      const [decision, reason] = key.split("\u0000") as [string, string]
      yield* Metric.update(Metric.withAttributes(outcomes, { decision, reason }), n)
    }
    counts.clear()
  })
  yield* flush.pipe(Effect.repeat(Schedule.spaced("2 seconds")), Effect.forkScoped)
  const context = yield* Effect.context<never>()
  const proxy = makeProxy({
    warn: (message, fields) => void Effect.runForkWith(context)(Effect.logWarning(message).pipe(Effect.annotateLogs(fields))),
    directory,
    revocations,
    verifier,
    replay: makeReplayGuard(limits, (jti) => redis.keys.key("jti", jti), vars.JTI_CACHE_SIZE),
    credentials: makeCredentialCache({
      baseUrl: stsUrl,
      key: Redacted.value(vars.SERVICE_HMAC_KEY),
      insecureTls: vars.INSECURE_STS,
      timeoutMs: 5000
    }),
    audit: (record) => audit.appendNow(record).then(() => undefined),
    // the audit stream on the same Redis as the replay store (the default): each call's record
    // goes with its jti claim, in one script
    ...(Redacted.value(vars.AUDIT_STREAM_URL) === Redacted.value(vars.REDIS_URL)
      ? { recordWithClaim: { stream: audit.stream, db: dbOfUrl(Redacted.value(vars.AUDIT_STREAM_URL)), entry: audit.entry } }
      : {}),
    budgetKey: (zone, resource, app) => redis.keys.rateLimit("gateway", `${zone}:${resource}:${app}`),
    allowlist: vars.UPSTREAM_ALLOWLIST ?? parseAllowlist(undefined),
    maxBodyBytes: vars.MAX_BODY_BYTES,
    upstreamTimeoutMs: vars.UPSTREAM_TIMEOUT_MS,
    ratePerMinute: vars.RATE_LIMIT_PER_MINUTE,
    tls: config.tls !== undefined,
    count: (decision, reason) => {
      const key = `${decision}\u0000${reason}`
      counts.set(key, (counts.get(key) ?? 0) + 1)
    }
  })
  const operational = new Set(["/health", "/ready", "/metrics"])
  return Front.of({
    claims: (req) => !operational.has((req.url ?? "/").split("?")[0]!),
    handle: proxy.handle
  })
}))

/** The front with the projections and the audit stream it reads and writes. */
export const GatewayFrontLive = GatewayFront.pipe(Layer.provide([GatewayDirectory.layer, GatewayRevocations.layer, auditLogFromConfig]))
export const GatewayBackgroundLive = GatewayBackground.pipe(Layer.provide([GatewayDirectory.layer, GatewayRevocations.layer]))

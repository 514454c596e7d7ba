// The token endpoint assembled: the directory (an in-memory projection every replica keeps,
// caught up from the log and following the api's streams), the coordinator's state, the
// zone keys, the policy engine, the rate limits in Redis db1 and the audit stream.
// They are built once, as the ExchangeContext service, which the token endpoint and the
// credential release (release.ts: it verifies the mandates the token endpoint issued) share:
// one directory, one zone key cache, one audit connection per replica.
import { Context, Effect, Layer, Redacted } from "effect"
import { AuditLog, type AuditLogShape, auditLogFromConfig } from "../../core/audit-log.ts"
import { type Loaded, ServiceConfig } from "../../core/config/load.ts"
import { Consumer } from "../../core/consumer-layer.ts"
import { Database } from "../../core/db/database.ts"
import { dbOfUrl, RedisClient } from "../../core/redis/redis.ts"
import { countAndRecord, countInWindow } from "../../core/redis/window-count.ts"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import { events as apiRegistry } from "../api/events.ts"
import { stsSpec } from "./config.ts"
import { makeCoordinatorView } from "./coordinator-view.ts"
import { DIRECTORY_TYPES, type Directory, makeDirectory } from "../api/directory.ts"
import type { JWK } from "jose"
import { type Decision, type ExchangeDeps, makeExchange, type SigningKey as ExchangeSigningKey } from "./exchange.ts"
import { makeTokenEndpoint, PolicyUnavailableError } from "./token-route.ts"
import { Front, observeRequest } from "../../core/http/server.ts"

export type StsVars = Loaded<typeof stsSpec>["vars"]

/** The issuer every mandate names: ISSUER_URL, or in development the sts's own local URL. */
export const issuerOf = (vars: StsVars, mode: string): string => {
  if (vars.ISSUER_URL !== undefined) return vars.ISSUER_URL.replace(/\/$/, "")
  if (mode === "development") return `http://127.0.0.1:${vars.PORT}`
  throw new Error("ISSUER_URL: required in production (the iss of every mandate; the coordinator and gateway pin it)")
}

export class StsDirectory extends Context.Service<StsDirectory, Directory>()("caracal/sts/Directory") {
  static readonly layer = Layer.effect(StsDirectory, Effect.map(Database, (d) => makeDirectory(d.db)))
}

/** Every replica follows the api's zone, application, resource, provider, credential, binding and grant streams. */
export const DirectoryConsumer = Layer.unwrap(Effect.gen(function*() {
  const directory = yield* StsDirectory
  return Consumer.layer(stsSpec, {
    mode: "every-replica",
    name: "sts-directory",
    streams: (keys) => DIRECTORY_TYPES.map((t) => keys.stream(t)),
    registry: apiRegistry,
    runner: directory.runner as never
  })
}))

/** The audit stream at AUDIT_STREAM_URL, signed with STREAMS_HMAC_KEY. */
export const StsAuditLog = auditLogFromConfig

export interface TokenParts {
  readonly signingKey: ExchangeDeps["signingKey"]
  readonly publishedKeys: ExchangeDeps["publishedKeys"]
  readonly decide: ExchangeDeps["decide"]
}

export interface ExchangeContextShape {
  readonly deps: ExchangeDeps
  /** The exchange and the verification of this sts's own mandates, over `deps`. */
  readonly exchange: ReturnType<typeof makeExchange>
  readonly audit: AuditLogShape
}

/** What the token endpoint and the credential release share, built once per replica. */
export class ExchangeContext extends Context.Service<ExchangeContext, ExchangeContextShape>()("caracal/sts/ExchangeContext") {}

/** The shared context, given how keys are found and how the policy decides. */
export const exchangeContext = (parts: Effect.Effect<TokenParts, never, any>) =>
  Layer.effect(ExchangeContext, Effect.gen(function*() {
    const config = (yield* ServiceConfig) as unknown as Loaded<typeof stsSpec>
    const vars = config.vars
    const database = yield* Database
    const redis = yield* RedisClient
    const directory = yield* StsDirectory
    const audit = yield* AuditLog
    const { signingKey: keyOf, publishedKeys, decide } = yield* parts
    const budget = (scope: string, id: string) => redis.keys.rateLimit(scope, id)
    const auditDb = dbOfUrl(Redacted.value(vars.AUDIT_STREAM_URL))
    const deps: ExchangeDeps = {
      issuer: issuerOf(vars, config.mode),
      directory,
      signingKey: keyOf,
      publishedKeys,
      decide,
      coordinator: makeCoordinatorView(database.db),
      take: async (scope, id, perMinute) => {
        return (await countInWindow(redis.limits, budget(scope, id), 60)) <= perMinute
      },
      spent: async (scope, id, perMinute) => Number((await redis.limits.get(budget(scope, id))) ?? 0) >= perMinute,
      tokenRatePerMinute: vars.TOKEN_RATE_PER_MINUTE,
      clientFailuresPerMinute: vars.CLIENT_AUTH_FAILURES_PER_MINUTE,
      now: () => new Date(),
      // the audit stream on the budgets' Redis (the default): an issued mandate's budgets and
      // its record go in one script
      ...(Redacted.value(vars.AUDIT_STREAM_URL) === Redacted.value(vars.REDIS_URL)
        ? {
          takeAndRecord: (scope: string, ids: ReadonlyArray<string>, perMinute: number, record: AuditRecord) =>
            countAndRecord(redis.limits, ids.map((id) => budget(scope, id)), 60, perMinute, {
              stream: audit.stream,
              db: auditDb,
              fields: audit.entry(record)
            })
        }
        : {})
    }
    return ExchangeContext.of({ deps, exchange: makeExchange(deps), audit })
  }))

/** POST /oauth/2/token on the shared context, as the server's Front (token-route.ts). */
export const TokenFront = Layer.effect(Front, Effect.gen(function*() {
  const { deps, audit } = yield* ExchangeContext
  const context = yield* Effect.context<never>()
  const endpoint = makeTokenEndpoint(deps, {
    audit,
    logError: (message, fields) => void Effect.runForkWith(context)(Effect.logError(message).pipe(Effect.annotateLogs(fields))),
    observe: (method, status, seconds) => observeRequest("sts", method, status, seconds)
  })
  return Front.of(endpoint)
}))

/** The shared context with the zone keys and the policy engine the exchange signs and decides with. */
export const exchangeContextWith = <K, P>(
  keys: Effect.Effect<{
    readonly cachedSigningKey: (z: string) => ExchangeSigningKey | undefined
    readonly signingKeyOrProvision: (z: string) => Effect.Effect<ExchangeSigningKey | undefined, unknown>
    readonly jwks: (z: string) => Effect.Effect<ReadonlyArray<JWK>, unknown>
  }, never, K>,
  policy: Effect.Effect<{ readonly decideNow: (z: string, input: unknown) => Promise<Decision> }, never, P>
) =>
  exchangeContext(Effect.gen(function*() {
    const k = yield* keys
    const p = yield* policy
    // the exchange is plain async code: each dependency's failure becomes the error it answers with
    const run = async <A>(effect: Effect.Effect<A, unknown>, onFailure: (cause: unknown) => Error): Promise<A> => {
      const exit = await Effect.runPromiseExit(effect)
      if (exit._tag === "Success") return exit.value
      throw onFailure(exit.cause)
    }
    const unavailable = (what: string) => (cause: unknown) => new Error(`${what}: ${String(cause)}`)
    return {
      // a cached key without running an effect: most exchanges are cache hits
      signingKey: (z: string) => {
        const cached = k.cachedSigningKey(z)
        return cached !== undefined ? Promise.resolve(cached) : run(k.signingKeyOrProvision(z), unavailable("zone key"))
      },
      publishedKeys: (z: string) => run(k.jwks(z), unavailable("zone keys")),
      decide: (z: string, input: unknown) =>
        p.decideNow(z, input).catch(() => {
          throw new PolicyUnavailableError("policy engine")
        })
    } satisfies TokenParts
  }))

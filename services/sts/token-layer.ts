// The token endpoint assembled: the directory (an in-memory projection every replica keeps,
// caught up from the log and following the api's streams), the coordinator's state, the
// zone keys, the policy engine, the rate limits in Redis db1 and the audit stream.
import { Context, Effect, Layer, Redacted } from "effect"
import { HttpRouter } from "effect/http"
import { AuditLog } from "../../core/audit-log.ts"
import { type Loaded, ServiceConfig } from "../../core/config/load.ts"
import { Consumer } from "../../core/consumer-layer.ts"
import { Database } from "../../core/db/database.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { makeKeys } from "../../core/redis/keys.ts"
import { signingKey } from "../../core/signing.ts"
import { events as apiRegistry } from "../api/events.ts"
import { stsSpec } from "./config.ts"
import { makeCoordinatorView } from "./coordinator-view.ts"
import { DIRECTORY_TYPES, type Directory, makeDirectory } from "./directory.ts"
import type { JWK } from "jose"
import type { Decision, ExchangeDeps, SigningKey as ExchangeSigningKey } from "./exchange.ts"
import { PolicyUnavailableError, tokenHandler } from "./token-route.ts"

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

/** Every replica follows the api's zone, application, resource, binding and grant streams. */
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
export const StsAuditLog = Layer.unwrap(Effect.gen(function*() {
  const config = (yield* ServiceConfig) as unknown as Loaded<typeof stsSpec>
  const vars = config.vars
  return AuditLog.layer({
    url: Redacted.value(vars.AUDIT_STREAM_URL),
    password: vars.REDIS_PASSWORD === undefined ? undefined : Redacted.value(vars.REDIS_PASSWORD),
    keys: makeKeys(vars.REDIS_KEY_PREFIX),
    signer: vars.STREAMS_HMAC_KEY === undefined ? undefined : signingKey(Redacted.value(vars.STREAMS_HMAC_KEY))
  })
}))

export interface TokenParts {
  readonly signingKey: ExchangeDeps["signingKey"]
  readonly publishedKeys: ExchangeDeps["publishedKeys"]
  readonly decide: ExchangeDeps["decide"]
}

/** The route, given how keys are found and how the policy decides. */
export const tokenRoutes = (parts: Effect.Effect<TokenParts, never, any>) =>
  HttpRouter.use((router) =>
    Effect.gen(function*() {
      const config = (yield* ServiceConfig) as unknown as Loaded<typeof stsSpec>
      const vars = config.vars
      const database = yield* Database
      const redis = yield* RedisClient
      const directory = yield* StsDirectory
      const audit = yield* AuditLog
      const { signingKey: keyOf, publishedKeys, decide } = yield* parts
      const budget = (scope: string, id: string) => redis.keys.rateLimit(scope, id)
      const deps: ExchangeDeps = {
        issuer: issuerOf(vars, config.mode),
        directory,
        signingKey: keyOf,
        publishedKeys,
        decide,
        coordinator: makeCoordinatorView(database.db),
        take: async (scope, id, perMinute) => {
          const key = budget(scope, id)
          const [[, n]] = (await redis.limits.multi().incr(key).expire(key, 60, "NX").exec()) as [[unknown, number]]
          return n <= perMinute
        },
        spent: async (scope, id, perMinute) => Number((await redis.limits.get(budget(scope, id))) ?? 0) >= perMinute,
        tokenRatePerMinute: vars.TOKEN_RATE_PER_MINUTE,
        clientFailuresPerMinute: vars.CLIENT_AUTH_FAILURES_PER_MINUTE,
        now: () => new Date()
      }
      yield* router.add("POST", "/oauth/2/token", tokenHandler(deps, audit))
    }))

/** The token endpoint with the zone keys and the policy engine it signs and decides with. */
export const tokenRoutesWith = <K, P>(
  keys: Effect.Effect<{ readonly signingKeyOrProvision: (z: string) => Effect.Effect<ExchangeSigningKey | undefined, unknown>; readonly jwks: (z: string) => Effect.Effect<ReadonlyArray<JWK>, unknown> }, never, K>,
  policy: Effect.Effect<{ readonly decide: (z: string, input: unknown) => Effect.Effect<Decision, unknown> }, never, P>
) =>
  tokenRoutes(Effect.gen(function*() {
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
      signingKey: (z: string) => run(k.signingKeyOrProvision(z), unavailable("zone key")),
      publishedKeys: (z: string) => run(k.jwks(z), unavailable("zone keys")),
      decide: (z: string, input: unknown) => run(p.decide(z, input), () => new PolicyUnavailableError("policy engine"))
    } satisfies TokenParts
  }))

// The CLI's connection settings, read once through the same variable definitions the
// services use, and the clients opened from them. Without DATABASE_URL or REDIS_URL the
// CLI talks to the local stack, so `npm run caracal -- …` works in a fresh checkout.
import { Effect, Redacted, type Scope } from "effect"
import { Redis } from "ioredis"
import type { Kysely } from "kysely"
import { verifierFrom } from "../core/backbone.ts"
import { type ConfigInvalid, loadSpec } from "../core/config/load.ts"
import { optional, parsers as p, type Spec, type Var } from "../core/config/vars.ts"
import { makeKysely } from "../core/db/database.ts"
import type { Tables } from "../core/db/tables.ts"
import { makeKeys } from "../core/redis/keys.ts"
import type { Verifier } from "../core/signing.ts"
import { stackEnv } from "../core/stack-env.ts"

const withSecretDefault = <A>(parse: Var<A>["parse"], fallback: string, doc: string): Var<A> => ({
  parse,
  required: false,
  default: fallback,
  secret: true,
  doc
})

const prefix: Var<string> = {
  // the prefix becomes part of every key name; the key builder's rule is checked here, at startup
  parse: (raw) => {
    try {
      makeKeys(raw)
      return { ok: true, value: raw }
    } catch {
      return { ok: false, rule: "must contain only letters, digits and _ . : -" }
    }
  },
  required: false,
  default: "caracal",
  secret: false,
  doc: "Prefix of stream and key names"
}

export const cliSpec = () => {
  const local = stackEnv()
  return {
    DATABASE_URL: withSecretDefault(p.secretUrl(["postgres", "postgresql"]), local.DATABASE_URL, "PostgreSQL connection string"),
    REDIS_URL: withSecretDefault(p.secretUrl(["redis", "rediss"]), local.REDIS_URL, "Redis connection URL"),
    REDIS_PASSWORD: optional(p.secretAny, "Alternative to embedding the password in REDIS_URL", true),
    STREAMS_HMAC_KEY: optional(p.hexKey(), "Hex key to verify stream signatures; unset means not checked", true),
    STREAMS_HMAC_PREVIOUS_KEYS: optional(p.hexKeyList, "Comma-separated hex keys also accepted (rotation)", true),
    CARACAL_STREAM_PREFIX: prefix
  } satisfies Spec
}

export interface CliEnv {
  readonly databaseUrl: Redacted.Redacted<string>
  readonly redisUrl: Redacted.Redacted<string>
  readonly redisPassword: Redacted.Redacted<string> | undefined
  /** Holds no keys when STREAMS_HMAC_KEY is unset: signatures are then reported as not checked. */
  readonly verifier: Verifier
  readonly prefix: string
}

export const loadCliEnv: Effect.Effect<CliEnv, ConfigInvalid> = Effect.suspend(() => loadSpec(cliSpec())).pipe(
  Effect.map((v) => ({
    databaseUrl: v.DATABASE_URL,
    redisUrl: v.REDIS_URL,
    redisPassword: v.REDIS_PASSWORD,
    verifier: verifierFrom(v),
    prefix: v.CARACAL_STREAM_PREFIX
  }))
)

/** host:port only: a URL may embed a password, and error messages are printed. */
export const describeUrl = (url: Redacted.Redacted<string>) => {
  try {
    const u = new URL(Redacted.value(url))
    return `${u.hostname}:${u.port || "default port"}`
  } catch {
    return "(unparseable URL)"
  }
}

export const openDatabase = (env: CliEnv): Effect.Effect<Kysely<Tables>, never, Scope.Scope> =>
  Effect.acquireRelease(
    // a CLI runs one query at a time; two connections leave room for a progress query
    Effect.sync(() => makeKysely(Redacted.value(env.databaseUrl), 2)),
    (db) => Effect.promise(() => db.destroy())
  )

export const openRedis = (env: CliEnv) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const r = new Redis(Redacted.value(env.redisUrl), {
          lazyConnect: true,
          // one attempt: an operator wants "cannot connect" now, not a silent retry loop
          retryStrategy: () => null,
          maxRetriesPerRequest: 1,
          ...(env.redisPassword === undefined ? {} : { password: Redacted.value(env.redisPassword) })
        })
        // the socket's own error (e.g. ECONNREFUSED) says more than connect()'s "Connection is closed"
        let cause: unknown
        r.on("error", (e) => (cause ??= e))
        try {
          await r.connect()
        } catch (e) {
          r.disconnect()
          throw cause ?? e
        }
        return r
      },
      catch: (e) => new Error(`cannot connect to Redis at ${describeUrl(env.redisUrl)}: ${e instanceof Error ? e.message : String(e)}`)
    }),
    (r) => Effect.promise(() => r.quit().then(() => undefined, () => r.disconnect()))
  )

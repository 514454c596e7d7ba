// ioredis clients as a scoped Effect service: db0 holds streams, db1 rate-limit
// counters. At start it checks maxmemory-policy, because any evicting policy can
// silently drop stream entries that consumers have not read yet.
import { Context, Effect, Layer, Schema } from "effect"
import { Redis } from "ioredis"
import { type Keys, makeKeys } from "./keys.ts"

export class RedisError extends Schema.TaggedError<RedisError>()("RedisError", { cause: Schema.Defect() }) {}

export class RedisUnsafe extends Schema.TaggedError<RedisUnsafe>()("RedisUnsafe", {
  variable: Schema.String,
  rule: Schema.String
}) {
  override get message() {
    return `${this.variable}: ${this.rule}`
  }
}

export interface RedisOptions {
  readonly url: string
  readonly password?: string | undefined
  readonly prefix?: string
  /** In production an evicting Redis refuses the start; in development it only warns. */
  readonly strict: boolean
  /** CLIENT SETNAME of every connection (and of their duplicates): who is who in CLIENT LIST. */
  readonly connectionName?: string
}

export interface RedisShape {
  /** db0: streams and consumer groups. */
  readonly streams: Redis
  /** db1: rate-limit counters. */
  readonly limits: Redis
  readonly keys: Keys
  readonly run: <A>(f: (r: Redis) => Promise<A>) => Effect.Effect<A, RedisError>
  readonly ping: Effect.Effect<void, RedisError>
}

const connect = (url: string, db: number, password: string | undefined, connectionName?: string) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const r = new Redis(url, {
          db,
          lazyConnect: true,
          maxRetriesPerRequest: 2,
          // keep retrying to reconnect; commands fail fast while Redis is away
          retryStrategy: (times) => Math.min(times * 100, 2000),
          ...(password === undefined ? {} : { password }),
          ...(connectionName === undefined ? {} : { connectionName })
        })
        r.on("error", () => {}) // reported by the commands that fail, not as unhandled events
        await r.connect()
        return r
      },
      catch: (cause) => new RedisError({ cause })
    }),
    (r) => Effect.promise(() => r.quit().catch(() => r.disconnect()))
  )

/** The database a Redis URL names (its path, as ioredis reads it), 0 by default. */
export const dbOfUrl = (url: string): number => {
  const path = new URL(url).pathname.replace(/^\//, "")
  return /^\d+$/.test(path) ? Number(path) : 0
}

export const evictionPolicy = (r: Redis) =>
  Effect.tryPromise({
    try: async () => {
      const res = (await r.config("GET", "maxmemory-policy")) as Array<string>
      return res[1] ?? "unknown"
    },
    catch: (cause) => new RedisError({ cause })
  })

export class RedisClient extends Context.Service<RedisClient, RedisShape>()("caracal/core/Redis") {
  static readonly layerWith = (opts: RedisOptions) =>
    Layer.effect(
      RedisClient,
      Effect.gen(function*() {
        const streams = yield* connect(opts.url, 0, opts.password, opts.connectionName)
        const limits = yield* connect(opts.url, 1, opts.password, opts.connectionName)
        const policy = yield* evictionPolicy(streams)
        if (policy !== "noeviction") {
          const rule = `Redis maxmemory-policy is ${policy}; it must be noeviction or stream entries can be lost`
          if (opts.strict) return yield* new RedisUnsafe({ variable: "REDIS_URL", rule })
          yield* Effect.logWarning(rule)
        }
        const run = <A>(f: (r: Redis) => Promise<A>) =>
          Effect.tryPromise({ try: () => f(streams), catch: (cause) => new RedisError({ cause }) })
        return {
          streams,
          limits,
          keys: makeKeys(opts.prefix),
          run,
          ping: Effect.asVoid(run((r) => r.ping()))
        }
      })
    )
}

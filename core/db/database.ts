// Postgres through Kysely over a bounded pg pool, as a scoped Effect service.
import { Context, Effect, Layer, Redacted, Schema } from "effect"
import { Kysely, PostgresDialect, sql } from "kysely"
import pg from "pg"
import type { Tables } from "./tables.ts"

/** Bounded so that N replicas × services stay well under Postgres' max_connections. */
export const POOL_MAX = 16

export class DbError extends Schema.TaggedError<DbError>()("DbError", { cause: Schema.Defect() }) {}

/**
 * pg's Client, with its promise form run through its callback form. The promise form assigns
 * its callback to a property of the query, and V8 allocates a function written that way
 * straight in old space: until the next full collection it keeps the query — with every row
 * it returned — reachable for minor collections, which copy and promote all of it (in the
 * e2e benchmark's writer process, the largest share of what each scavenge promoted). The
 * callback form leaves the query's lifetime to its caller.
 */
class ReleasingClient extends pg.Client {
  override query(...args: Array<unknown>): any {
    const [config, values, callback] = args
    const c = config as { submit?: unknown; callback?: unknown } | null
    // a query object, or a callback anywhere (argument or config): pg's own path, untouched
    const promiseForm = callback === undefined && typeof values !== "function" &&
      typeof c?.submit !== "function" && typeof c?.callback !== "function"
    const query = super.query as (...a: Array<unknown>) => unknown
    if (!promiseForm) return query.apply(this, args)
    return new Promise((resolve, reject) => {
      query.call(this, config, values, (err: Error | null, res: unknown) => (err ? reject(err) : resolve(res)))
    })
  }
}

// pg returns bigint (int8) as string by default; keep it so positions never lose precision.
export const makeKysely = (url: string, max = POOL_MAX) => {
  const pool = new pg.Pool({ connectionString: url, max, idleTimeoutMillis: 30_000, connectionTimeoutMillis: 5_000, Client: ReleasingClient })
  // an idle client dropped by the server (restart, admin termination) must not crash the process;
  // the next query on the pool gets a fresh connection
  pool.on("error", () => {})
  // a connection dropped while a query runs on it: the query fails (and the caller answers 503);
  // without a listener its error event would crash the process
  pool.on("connect", (client) => client.on("error", () => {}))
  const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) })
  pools.set(db, pool)
  return db
}

const pools = new WeakMap<Kysely<any>, pg.Pool>()
/** The pg pool under a Kysely made by makeKysely: for what Kysely cannot say, such as COPY … TO STDOUT. */
export const poolOf = (db: Kysely<any>): pg.Pool | undefined => pools.get(db)

/**
 * Postgres could not be used (down, restarting, overloaded, cancelled): a 503 with a retry.
 * Any other SQL error is the statement's fault, a bug: a defect, a 500.
 */
export const isUnavailable = (e: unknown): boolean => {
  const code = typeof e === "object" && e !== null ? (e as { code?: unknown }).code : undefined
  if (typeof code !== "string" || !/^[0-9A-Z]{5}$/.test(code)) return true // a network error, not an SQL one
  return /^(08|53|57|58)/.test(code) || code === "55P03" || code === "40001" || code === "40P01"
}

export interface DatabaseShape {
  readonly db: Kysely<Tables>
  /** Run a Kysely promise as an Effect; failures become DbError. */
  readonly query: <A>(f: (db: Kysely<Tables>) => Promise<A>) => Effect.Effect<A, DbError>
  readonly ping: Effect.Effect<void, DbError>
}

export const makeDatabase = (db: Kysely<Tables>): DatabaseShape => {
  const query = <A>(f: (db: Kysely<Tables>) => Promise<A>) =>
    Effect.tryPromise({ try: () => f(db), catch: (cause) => new DbError({ cause }) })
  return { db, query, ping: Effect.asVoid(query((db) => sql`select 1`.execute(db))) }
}

export class Database extends Context.Service<Database, DatabaseShape>()("caracal/core/Database") {
  static readonly layerFromUrl = (url: Redacted.Redacted<string> | string, max = POOL_MAX) =>
    Layer.effect(
      Database,
      Effect.gen(function*() {
        const kysely = yield* Effect.acquireRelease(
          Effect.sync(() => makeKysely(typeof url === "string" ? url : Redacted.value(url), max)),
          (db) => Effect.promise(() => db.destroy())
        )
        const database = makeDatabase(kysely)
        yield* database.ping // fail fast at startup rather than on the first request
        return database
      })
    )
}

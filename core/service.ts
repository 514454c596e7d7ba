// What every service's main.ts does: read its configuration, connect to Postgres and
// Redis, migrate, and serve its routes with the HTTP kernel until SIGTERM/SIGINT.
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Layer, Redacted } from "effect"
import { type CommonVars, type Loaded, loadService, ServiceConfig, type ServiceSpec } from "./config/load.ts"
import { Database } from "./db/database.ts"
import { migrateToLatest } from "./db/migrate.ts"
import type { ErrorMapper } from "./http/errors.ts"
import { type Front, type ReadyCheck, serve } from "./http/server.ts"
import { LoggingLive } from "./log.ts"
import { Producer } from "./producer.ts"
import { RedisClient } from "./redis/redis.ts"

export type Infra = ServiceConfig | Database | RedisClient

export interface ServiceDefinition<S extends ServiceSpec> {
  readonly name: string
  /** The service's variables (its services/<name>/config.ts). */
  readonly spec: S
  /** The service's producer (Producer.layer), if it writes events: routes and background work may use it. */
  readonly producer?: Layer.Layer<Producer, unknown, Infra>
  /** The service's own routes (HttpRouter.add/use layers); may use the infrastructure. */
  // (its requirements also carry the router's per-request markers, hence `any`)
  readonly routes?: Layer.Layer<never, unknown, any>
  /** Background work (relays, consumers, sweepers) that lives as long as the service. */
  readonly background?: Layer.Layer<never, unknown, Infra | Producer>
  /** A raw handler that takes the requests it claims before the router (core/http/server.ts Front). */
  readonly front?: Layer.Layer<Front, unknown, any>
  readonly mapError?: ErrorMapper
  /** Extra /ready checks built from the service's own variables (e.g. a policy engine). */
  readonly readyChecksFrom?: (vars: Loaded<S>["vars"]) => ReadonlyArray<ReadyCheck>
}

const varsOf = (config: Loaded) => config.vars as unknown as CommonVars

const infraLayer = (config: Loaded) => {
  const vars = varsOf(config)
  const db = Database.layerFromUrl(vars.DATABASE_URL)
  const redis = RedisClient.layerWith({
    url: Redacted.value(vars.REDIS_URL),
    password: vars.REDIS_PASSWORD === undefined ? undefined : Redacted.value(vars.REDIS_PASSWORD),
    prefix: vars.REDIS_KEY_PREFIX,
    strict: config.mode === "production"
  })
  const migrate = Layer.effectDiscard(Effect.gen(function*() {
    if (!vars.MIGRATE_ON_START) return
    const report = yield* migrateToLatest(yield* Database, Redacted.value(vars.DATABASE_URL))
    yield* Effect.logInfo("migrations applied").pipe(Effect.annotateLogs({ applied: report.applied }))
  }))
  const base = Layer.mergeAll(db, redis, Layer.succeed(ServiceConfig, config))
  // migrations run before anything that depends on the infrastructure layer starts
  return Layer.provideMerge(migrate, base)
}

/** The whole service as one layer, built from already-loaded configuration. */
export const serviceLayer = <S extends ServiceSpec>(def: ServiceDefinition<S>, config: Loaded<S>) => {
  // the producer is built once and shared by the routes and the background work
  const infra = def.producer ? Layer.provideMerge(def.producer, infraLayer(config)) : infraLayer(config)
  const routes = def.routes ?? Layer.empty
  const http = Layer.unwrap(Effect.gen(function*() {
    const database = yield* Database
    const redis = yield* RedisClient
    const readyChecks: Array<ReadyCheck> = [
      { name: "postgres", check: database.ping },
      { name: "redis", check: redis.ping },
      ...(def.readyChecksFrom?.(config.vars) ?? [])
    ]
    return serve(routes, {
      service: def.name,
      port: varsOf(config).PORT,
      host: varsOf(config).HOST,
      tls: config.tls,
      readyChecks,
      ...(def.mapError ? { mapError: def.mapError } : {}),
      ...(def.front ? { front: def.front } : {})
    })
  }))
  return Layer.mergeAll(http, def.background ?? Layer.empty).pipe(Layer.provide(infra))
}

/** Entry point: startup failures name the variable and rule on stderr and exit 1. */
export const runService = <S extends ServiceSpec>(def: ServiceDefinition<S>) => {
  const program = Effect.gen(function*() {
    const config = yield* loadService(def.name, def.spec)
    return yield* Layer.launch(serviceLayer(def, config)).pipe(Effect.provide(LoggingLive(def.name, varsOf(config).LOG_LEVEL)))
  }).pipe(
    Effect.tapCause((cause) =>
      Effect.sync(() => {
        if (Cause.hasInterruptsOnly(cause)) return
        const failure = Cause.findErrorOption(cause)
        const reason = failure._tag === "Some"
          ? (failure.value instanceof Error ? failure.value.message : String(failure.value))
          : Cause.pretty(cause)
        process.stderr.write(`caracal-${def.name}: cannot start: ${reason}\n`)
      })
    )
  )
  NodeRuntime.runMain(program as Effect.Effect<never, unknown>, { disableErrorReporting: true })
}

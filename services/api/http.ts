// The api's HTTP surface: its routes (routes.ts) run by route-kit.ts behind the admin
// token, the OpenAPI document built from the same list, and how its refusals answer.
import { Effect, Redacted } from "effect"
import { HttpRouter } from "effect/http"
import { loadSpec } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import type { Answer } from "../../core/http/errors.ts"
import { serviceHmacKeys } from "../../core/internal-call.ts"
import { Producer } from "../../core/producer.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { makeAdminAuth } from "./auth.ts"
import { makeCommands } from "./commands.ts"
import { apiSpec } from "./config.ts"
import { openApiDocument } from "./openapi.ts"
import { makeQueries } from "./queries.ts"
import { answer, handlerOf, route, routerPath, type RouteSpec } from "./route-kit.ts"
import { makeRoutes } from "./routes.ts"
import { makeStsClient } from "./sts-client.ts"
import { bootstrapRoute } from "./bootstrap.ts"
import { type AuditRouteDeps, auditRoutes } from "./audit-routes.ts"

/** Refusals answer with their own status and stable code. */
export const apiErrors = (error: unknown): Answer | undefined => {
  if (typeof error !== "object" || error === null || !("_tag" in error)) return undefined
  const e = error as { _tag: string; status?: number; code?: string; description?: string }
  if (e._tag === "ApiRejected" && e.status !== undefined && e.code !== undefined) {
    return { status: e.status, code: e.code, description: e.description ?? e.code, internal: false }
  }
  if (e._tag === "ConcurrencyExhausted") {
    return { status: 409, code: "conflict", description: "too many concurrent changes to this record; retry", internal: false }
  }
  return undefined
}

export const API_VERSION = "1.0.0"

/** Every route the api serves, the OpenAPI document's included. */
// without `audit` (listing the routes, e.g. for the OpenAPI test) the audit routes are listed but cannot run
const noAuditTables: AuditRouteDeps = {
  get db(): never {
    throw new Error("the audit routes were listed without a database")
  },
  zoneExists: () => Promise.resolve(false)
}

export const apiRouteList = (deps: Parameters<typeof makeRoutes>[0] & { readonly audit?: AuditRouteDeps }): ReadonlyArray<RouteSpec> => {
  const routes: ReadonlyArray<RouteSpec> = [
    ...makeRoutes(deps),
    ...auditRoutes(deps.audit ?? noAuditTables),
    ...(deps.development ? [bootstrapRoute(deps)] : [])
  ]
  let all: ReadonlyArray<RouteSpec> = routes
  const document: RouteSpec = route({
    method: "GET",
    path: "/v1/openapi.json",
    tag: "meta",
    summary: "This document",
    status: 200,
    run: () => Effect.succeed(answer(openApiDocument(all, API_VERSION), 200))
  })
  all = [...routes, document]
  return all
}

export const ApiRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(apiSpec)
    const producer = yield* Producer
    const database = yield* Database
    const redis = yield* RedisClient
    const queries = makeQueries(database.db)
    const routes = apiRouteList({
      commands: makeCommands(producer),
      queries,
      sts: makeStsClient({
        baseUrl: vars.STS_URL,
        key: serviceHmacKeys(vars)[0]!,
        insecureTls: vars.INSECURE_STS
      }),
      development: vars.CARACAL_MODE === "development",
      audit: {
        db: database.db,
        zoneExists: async (zone) => (await queries.one("zone", zone, zone)) !== undefined,
        hmacKey: vars.AUDIT_HMAC_KEY === undefined ? undefined : Redacted.value(vars.AUDIT_HMAC_KEY),
        checkpointPublicKey: vars.AUDIT_CHECKPOINT_PUBLIC_KEY === undefined ? undefined : Redacted.value(vars.AUDIT_CHECKPOINT_PUBLIC_KEY)
      }
    })
    const auth = makeAdminAuth(Redacted.value(vars.ADMIN_TOKEN), redis.limits, redis.keys)
    yield* router.addAll(routes.map((r) => HttpRouter.route(r.method, routerPath(r.path) as `/${string}`, handlerOf(r, auth))))
  }))

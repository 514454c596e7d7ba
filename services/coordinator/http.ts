// The coordinator's HTTP surface, under /zones/{zone} and /v1/zones/{zone}. Every route
// authenticates the caller's mandate for the route's zone; the handler checks that the
// mandate acts for the application concerned, runs the command, finishes any cascade it
// started, and answers with the resulting session or delegation.
import { Context, Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import { canonicalJson } from "../../core/signing.ts"
import { HttpRouter, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { loadSpec } from "../../core/config/load.ts"
import { coordinatorSpec } from "./config.ts"
import { Producer } from "../../core/producer.ts"
import { Database } from "../../core/db/database.ts"
import type { Answer } from "../../core/http/errors.ts"
import { httpError } from "../../core/http/errors.ts"
import { RequestId } from "../../core/http/server.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { actsFor, authenticate, authErrorAnswer, isZoneId, type Mandate, makeMandateVerifier, requireActsFor } from "./auth.ts"
import * as Body from "./bodies.ts"
import { sweep } from "./cascade.ts"
import { type Caller, makeCommands } from "./commands.ts"
import { makeQueries } from "./queries.ts"

export class Coordinator extends Context.Service<Coordinator, {
  readonly commands: ReturnType<typeof makeCommands>
  readonly queries: ReturnType<typeof makeQueries>
  readonly verify: (header: string | undefined, zone: string) => Effect.Effect<Mandate, unknown>
  readonly sweep: (zone?: string) => Effect.Effect<number, unknown>
}>()("caracal/coordinator/Coordinator") {
  static readonly layer = Layer.effect(Coordinator, Effect.gen(function*() {
    const database = yield* Database
    const vars = yield* loadSpec(coordinatorSpec)
    const commands = makeCommands({
      producer: yield* Producer,
      limits: {
        maxDepth: vars.MAX_DEPTH,
        maxChildren: vars.MAX_CHILDREN,
        maxPerZone: vars.MAX_PER_ZONE,
        maxPerApp: vars.MAX_PER_APP,
        defaultTtlSeconds: vars.DEFAULT_TTL_SECONDS
      }
    })
    const verifier = makeMandateVerifier({ stsUrl: vars.STS_URL, issuer: vars.ISSUER_URL, cooldownMs: vars.JWKS_COOLDOWN_MS })
    return {
      commands,
      queries: makeQueries(database.db),
      verify: (header, zone) => authenticate(verifier, header, zone),
      sweep: (zone) => sweep(database, commands, zone)
    }
  }))
}

/** Domain rejections and auth failures answer with their own status and stable code. */
export const coordinatorErrors = (error: unknown): Answer | undefined => {
  const auth = authErrorAnswer(error)
  if (auth) return auth
  if (typeof error !== "object" || error === null || !("_tag" in error)) return undefined
  const e = error as { _tag: string; status?: number; code?: string; description?: string }
  if ((e._tag === "SessionRejected" || e._tag === "DelegationRejected") && e.status && e.code) {
    return { status: e.status, code: e.code, description: e.description ?? e.code, internal: false }
  }
  if (e._tag === "ConcurrencyExhausted") {
    return { status: 409, code: "conflict", description: "too many concurrent changes to this resource; retry", internal: false }
  }
  return undefined
}

const notFound = (what: string) => httpError(404, "not_found", `no such ${what} in this zone`)

/** Authenticates the mandate for the route's zone and hands the handler what it needs. */
const authed = <A, E, R>(coordinator: Coordinator["Service"], handler: (ctx: {
  readonly zone: string
  readonly params: Readonly<Record<string, string | undefined>>
  readonly mandate: Mandate
  readonly caller: Caller
  readonly coordinator: Coordinator["Service"]
}) => Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const params = yield* HttpRouter.params
    const zone = params.zone ?? ""
    if (!isZoneId(zone)) return yield* httpError(404, "not_found", "no such zone")
    const req = yield* Req.HttpServerRequest
    const mandate = yield* coordinator.verify(req.headers.authorization, zone)
    const idempotencyKey = req.headers["idempotency-key"]
    if (idempotencyKey !== undefined && !/^[\x21-\x7e]{1,200}$/.test(idempotencyKey)) {
      return yield* httpError(400, "invalid_request", "Idempotency-Key must be 1-200 printable ASCII characters")
    }
    const caller: Caller = {
      zoneId: zone,
      applicationId: mandate.clientId,
      requestId: yield* RequestId,
      // keys are per caller: two applications choosing the same key never collide
      idempotencyKey: idempotencyKey === undefined ? undefined : `${mandate.clientId}:${idempotencyKey}`,
      // what the key was used for: the route (with its ids); a handler with a body adds the body
      idempotencyFingerprint: idempotencyKey === undefined ? undefined : `${req.method} ${req.url.split("?")[0]}`
    }
    return yield* handler({ zone, params, mandate, caller, coordinator })
  })

/**
 * The request an Idempotency-Key stands for: its route and its validated body in canonical
 * form (key order and spacing do not matter), hashed. The same key with another body is refused.
 */
const withBody = (caller: Caller, body: unknown): Caller =>
  caller.idempotencyFingerprint === undefined ? caller : {
    ...caller,
    idempotencyFingerprint: createHash("sha256").update(`${caller.idempotencyFingerprint}\n${canonicalJson(body)}`).digest("hex")
  }

type Prefix = "" | "/v1"

const json = (body: unknown, status = 200) => Res.jsonUnsafe(body, { status })

const visibleSession = (c: Coordinator["Service"], zone: string, id: string | undefined, mandate: Mandate) =>
  Effect.gen(function*() {
    const s = id === undefined ? undefined : yield* c.queries.session(zone, id)
    if (s === undefined) return yield* notFound("session")
    yield* Effect.try({ try: () => requireActsFor(mandate, s.application_id), catch: (e) => e })
    return s
  })

const visibleDelegation = (c: Coordinator["Service"], zone: string, id: string | undefined, mandate: Mandate) =>
  Effect.gen(function*() {
    const d = id === undefined ? undefined : yield* c.queries.delegation(zone, id)
    if (d === undefined) return yield* notFound("delegation")
    if (!actsFor(mandate, d.issuer_application_id) && !actsFor(mandate, d.receiver_application_id)) {
      return yield* httpError(403, "forbidden", "the mandate acts for neither end of this delegation")
    }
    return d
  })

const sessionRoutes = (c: Coordinator["Service"], prefix: Prefix) => [
  HttpRouter.route("POST", `${prefix}/zones/:zone/agents`, authed(c, ({ zone, mandate, caller, coordinator }) =>
    Effect.gen(function*() {
      const body = yield* Req.schemaBodyJson(Body.Spawn)
      yield* Effect.try({ try: () => requireActsFor(mandate, body.application_id), catch: (e) => e })
      yield* Body.checkMetadata(body.metadata)
      const out = yield* coordinator.commands.spawn(withBody(caller, body), {
        applicationId: body.application_id,
        parentId: body.parent_id ?? undefined,
        kind: body.kind ?? "instance",
        ttlSeconds: body.ttl_seconds,
        metadata: body.metadata ?? {}
      })
      const s = yield* coordinator.queries.session(zone, out.result.id)
      // a repeated Idempotency-Key returns the session it created the first time
      return json(s, out.replayed ? 200 : 201)
    }))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/agents`, authed(c, ({ zone, mandate, coordinator }) =>
    Effect.gen(function*() {
      const q = yield* Body.listQuery
      if (q.application_id !== undefined) yield* Effect.try({ try: () => requireActsFor(mandate, q.application_id!), catch: (e) => e })
      const apps = q.application_id !== undefined ? [q.application_id] : Body.actingFor(mandate)
      const items = yield* coordinator.queries.sessions(zone, { applicationIds: apps, status: q.status, after: q.after, limit: q.limit + 1 })
      const page = items.slice(0, q.limit)
      const last = page[page.length - 1]
      return json({ items: page, next_cursor: items.length > q.limit && last ? Body.cursorOf(last) : null })
    }))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/agents/:id`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.map(visibleSession(coordinator, zone, params.id, mandate), (s) => json(s)))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/agents/:id/children`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.gen(function*() {
      yield* visibleSession(coordinator, zone, params.id, mandate)
      return json({ items: yield* coordinator.queries.children(zone, params.id!) })
    }))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/agents/:id/tree`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.gen(function*() {
      yield* visibleSession(coordinator, zone, params.id, mandate)
      return json({ items: yield* coordinator.queries.tree(zone, params.id!) })
    }))),
  ...(["suspend", "resume"] as const).map((action) =>
    HttpRouter.route("POST", `${prefix}/zones/:zone/agents/:id/${action}`, authed(c, ({ zone, params, mandate, caller, coordinator }) =>
      Effect.gen(function*() {
        const s = yield* visibleSession(coordinator, zone, params.id, mandate)
        yield* coordinator.commands[action](caller, s.id)
        yield* coordinator.sweep(zone)
        return json(yield* coordinator.queries.session(zone, s.id))
      })))),
  HttpRouter.route("DELETE", `${prefix}/zones/:zone/agents/:id`, authed(c, ({ zone, params, mandate, caller, coordinator }) =>
    Effect.gen(function*() {
      const s = yield* visibleSession(coordinator, zone, params.id, mandate)
      const reason = yield* Body.reasonOf
      yield* coordinator.commands.terminate(caller, s.id, reason)
      // the subtree is ended before answering; if this process dies meanwhile, the next sweep finishes it
      yield* coordinator.sweep(zone)
      return json(yield* coordinator.queries.session(zone, s.id))
    }))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/agents/:id/delegations`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.gen(function*() {
      const s = yield* visibleSession(coordinator, zone, params.id, mandate)
      const direction = yield* Body.directionQuery
      const of = (d: "inbound" | "outbound") => coordinator.queries.delegationsOf(zone, s.id, d)
      return json(direction === undefined
        ? { inbound: yield* of("inbound"), outbound: yield* of("outbound") }
        : { items: yield* of(direction) })
    })))
]

const delegationRoutes = (c: Coordinator["Service"], prefix: Prefix) => [
  HttpRouter.route("POST", `${prefix}/zones/:zone/delegations`, authed(c, ({ zone, mandate, caller, coordinator }) =>
    Effect.gen(function*() {
      const body = yield* Req.schemaBodyJson(Body.Delegate)
      yield* Effect.try({ try: () => requireActsFor(mandate, body.issuer_application_id), catch: (e) => e })
      // the receiver consents by asking itself, or the caller holds the right to delegate without asking
      if (!actsFor(mandate, body.receiver_application_id) && !mandate.scopes.has("delegation:grant")) {
        return yield* httpError(403, "consent_required", "the receiver must consent (act for it, or hold delegation:grant)")
      }
      const out = yield* coordinator.commands.createDelegation(withBody(caller, body), Body.delegationRequest(body))
      const d = yield* coordinator.queries.delegation(zone, out.result.id)
      return json(d, out.replayed ? 200 : 201)
    }))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/delegations/:id`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.map(visibleDelegation(coordinator, zone, params.id, mandate), (d) => json(d)))),
  HttpRouter.route("GET", `${prefix}/zones/:zone/delegations/:id/traverse`, authed(c, ({ zone, params, mandate, coordinator }) =>
    Effect.gen(function*() {
      const d = yield* visibleDelegation(coordinator, zone, params.id, mandate)
      return json({ items: yield* coordinator.queries.traverse(zone, d.id) })
    }))),
  // existing clients revoke with PATCH …/revoke; POST …/revoke and DELETE on the edge do the same
  ...([["POST", "/revoke"], ["PATCH", "/revoke"], ["DELETE", ""]] as const).map(([method, suffix]) =>
    HttpRouter.route(method, `${prefix}/zones/:zone/delegations/:id${suffix}`, authed(c, ({ zone, params, mandate, caller, coordinator }) =>
      Effect.gen(function*() {
        const d = yield* visibleDelegation(coordinator, zone, params.id, mandate)
        yield* Effect.try({ try: () => requireActsFor(mandate, d.issuer_application_id), catch: (e) => e })
        const reason = yield* Body.reasonOf
        yield* coordinator.commands.onDelegation(caller, d.id, { _tag: "RevokeDelegation", reason: reason === "requested" ? "revoked" : reason, causeId: null })
        yield* coordinator.sweep(zone)
        return json(yield* coordinator.queries.delegation(zone, d.id))
      }))))
]

// built once with the coordinator in hand: its verifier (and JWKS cache) lives as long as the service
export const CoordinatorRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const c = yield* Coordinator
    yield* router.addAll([...sessionRoutes(c, ""), ...sessionRoutes(c, "/v1"), ...delegationRoutes(c, ""), ...delegationRoutes(c, "/v1")])
  }))

// POST /internal/v1/credentials/{id}/release {mandate}: the gateway, serving a per-call
// mandate, asks for the upstream credential the mandate's client is bound to (CONTRACTS.md
// "Internal calls"). Signed like every internal call; a refused signature is a 401 (logged,
// not audited: nothing about it is known). Everything after the signature is decided here
// and appended to the audit stream (kind `credential_release`) before it is answered; an
// audit stream that does not take the record is a 503 and nothing is released.
//
//   200 {header, value, expires_at}  Cache-Control: no-store
//       header: the provider's header; value: the provider's value_prefix + the material (a
//       string), or for material {username, password} HTTP Basic credentials (RFC 7617,
//       "Basic " + base64(username:password), for an `authorization`-style header; the prefix
//       does not apply); expires_at: the mandate's exp (ISO 8601): the value serves that call only.
//   400 invalid_request          the body is not {mandate: "<jwt>"}, or the id cannot be one
//   403 {error: "forbidden", reason}
//       mandate_invalid     not a mandate of this sts (forged, unknown key, other issuer),
//                           expired (no clock tolerance here), or of an agent session that ended
//       not_per_call        an ambient mandate
//       zone_inactive       the mandate's zone is archived
//       client_inactive     the mandate's application is archived
//       zone_mismatch       the credential belongs to another zone than the mandate
//       credential_revoked  the api revoked it (read from the log: counts as soon as the api answered)
//       not_bound           none of the mandate's `aud` resources is a live resource the client is
//                           bound to by a live binding naming this credential
//   404 credential_not_found     no such credential (sealed here and recorded by the api)
//   422 unsupported_material     material that makes no header value: an object without string
//                                username and password, a username with ':', control characters
//   500 server_error             the credential does not open (its KEK is gone, or the row was
//                                altered) or its provider is unknown: reason credential_unsealable / provider_not_found
//   503 temporarily_unavailable  Postgres, the zone keys, the coordinator's state or the audit stream
//
// The value is in the response only: never in a log line, an event or an audit record.
import { Data, Effect, Layer, Schema } from "effect"
import { HttpRouter, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { loadSpec } from "../../core/config/load.ts"
import { Database, type DatabaseShape } from "../../core/db/database.ts"
import { RequestId } from "../../core/http/server.ts"
import { traceIdOf } from "../../core/http/trace-context.ts"
import { requireSignedCall, serviceHmacKeys } from "../../core/internal-call.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import { stsSpec } from "./config.ts"
import { credentialsUnderUnknownKeks, type Keks, type Material, openSealed, readCredential, resealCredentials } from "./credentials.ts"
import { keksFrom } from "./key-kek.ts"
import { ExchangeContext, type ExchangeContextShape } from "./token-layer.ts"
import { OAuthError } from "./token-request.ts"

/** A decided refusal: its status, its stable code and reason, and how the audit record names it. */
export class Refused extends Data.TaggedError("Refused")<{
  readonly status: number
  readonly error: string
  readonly reason: string
  readonly description: string
  readonly decision: "deny" | "error"
}> {}

/** A dependency failed: 503, recorded as an error. */
class Unavailable extends Data.TaggedError("Unavailable")<{ readonly cause: unknown }> {}

const forbidden = (reason: string, description: string) => new Refused({ status: 403, error: "forbidden", reason, description, decision: "deny" })
const notFound = () =>
  new Refused({ status: 404, error: "credential_not_found", reason: "credential_not_found", description: "no such credential", decision: "deny" })
const unsupported = (description: string) =>
  new Refused({ status: 422, error: "unsupported_material", reason: "unsupported_material", description, decision: "deny" })
const broken = (reason: string, description: string) => new Refused({ status: 500, error: "server_error", reason, description, decision: "error" })

const attempt = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new Unavailable({ cause }) })

const ID = /^[A-Za-z0-9._:-]{1,128}$/u
const ReleaseBody = Schema.Struct({
  mandate: Schema.String.pipe(Schema.check(Schema.isPattern(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/u), Schema.isMaxLength(16 * 1024)))
})

/** A header field value (RFC 9110 §5.5): visible characters, spaces and tabs, no line break. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]+$/u
const CONTROL = /[\x00-\x1f\x7f]/u

/** The header value the material makes with this provider; never echoes the material. */
export const headerValue = (valuePrefix: string, material: Material): Effect.Effect<string, Refused> => {
  let value: string
  if (typeof material === "string") {
    value = `${valuePrefix}${material}`
  } else {
    const { username, password } = material
    if (typeof username !== "string" || typeof password !== "string") {
      return Effect.fail(unsupported("object material is served as HTTP Basic and needs string username and password"))
    }
    if (username.includes(":") || CONTROL.test(username) || CONTROL.test(password)) {
      return Effect.fail(unsupported("HTTP Basic credentials allow no ':' in the username and no control characters"))
    }
    value = `Basic ${Buffer.from(`${username}:${password}`, "utf8").toString("base64")}`
  }
  if (!HEADER_VALUE.test(value)) return Effect.fail(unsupported("the material contains characters a header value cannot carry"))
  return Effect.succeed(value)
}

/** What the audit record says (filled as the release learns it); never the value. */
type Facts = { -readonly [K in "zone_id" | "client_id" | "agent_session_id" | "delegation_edge_id" | "resource" | "scope" | "jti"]: string | null }

interface Released {
  readonly header: string
  readonly value: string
  readonly expires_at: string
}

const audiences = (aud: unknown): ReadonlyArray<string> =>
  typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud.filter((a): a is string => typeof a === "string") : []

/** The decision: the material's header value, or why not. */
export const decideRelease = (
  ctx: ExchangeContextShape,
  database: DatabaseShape,
  keks: Keks,
  id: string,
  bodyText: string,
  facts: Facts
): Effect.Effect<Released, Refused | Unavailable> =>
  Effect.gen(function*() {
    const { deps, exchange } = ctx
    const directory = deps.directory
    const invalid = (description: string) => new Refused({ status: 400, error: "invalid_request", reason: "invalid_request", description, decision: "deny" })
    if (!ID.test(id)) return yield* invalid("the credential id is malformed")
    const json = yield* Effect.try({ try: () => JSON.parse(bodyText) as unknown, catch: () => invalid("the body must be JSON") })
    const body = yield* Schema.decodeUnknownEffect(ReleaseBody)(json).pipe(Effect.mapError(() => invalid("the body must be {mandate: \"<jwt>\"}")))

    // the mandate: verified as the token endpoint verifies a subject token
    const subject = yield* Effect.tryPromise({
      try: () => exchange.verifyOwnToken(body.mandate, "mandate", undefined),
      catch: (e) => (e instanceof OAuthError ? forbidden("mandate_invalid", e.description) : new Unavailable({ cause: e }))
    })
    const p = subject.payload
    const zoneId = subject.zoneId
    facts.zone_id = zoneId
    facts.client_id = subject.clientId
    facts.jti = typeof p.jti === "string" ? p.jti : null
    facts.agent_session_id = typeof p.agent_session_id === "string" ? p.agent_session_id : null
    facts.delegation_edge_id = typeof p.delegation_edge_id === "string" ? p.delegation_edge_id : null
    facts.scope = subject.scopes.join(" ") || null
    const aud = audiences(p.aud)
    facts.resource = aud.join(" ") || null
    // jwtVerify allows 5 s of skew past exp; a value is never released for a mandate already over
    if (typeof p.exp !== "number" || p.exp * 1000 <= deps.now().getTime()) return yield* forbidden("mandate_invalid", "the mandate has expired")
    if (subject.use !== "per_call") return yield* forbidden("not_per_call", "credentials are released for per-call mandates only")
    const zone = yield* attempt(() => directory.zone(zoneId))
    if (zone !== undefined && !zone.live) return yield* forbidden("zone_inactive", "the mandate's zone is archived")
    const app = yield* attempt(() => directory.application(zoneId, subject.clientId))
    if (app === undefined || !app.live) return yield* forbidden("client_inactive", "the mandate's application is archived or unknown")

    // the credential: sealed here, recorded by the api, of the mandate's zone, not revoked
    const sealed = yield* readCredential(database, id).pipe(Effect.mapError((cause) => new Unavailable({ cause })))
    if (sealed === undefined) return yield* notFound()
    if (sealed.zoneId !== zoneId) return yield* forbidden("zone_mismatch", "the credential belongs to another zone")
    const credential = yield* attempt(() => directory.credential(zoneId, id))
    if (credential === undefined) return yield* notFound()
    if (!credential.live || sealed.revoked) return yield* forbidden("credential_revoked", "the credential is revoked")

    // bound: a resource of the mandate, live, that the client is bound to with this credential
    let matched: string | undefined
    for (const identifier of aud) {
      const resource = yield* attempt(() => directory.resource(zoneId, identifier))
      if (resource === undefined || !resource.live) continue
      const binding = yield* attempt(() => directory.binding(zoneId, subject.clientId, resource.id))
      if (binding === undefined || !binding.live || binding.record.credentialId !== id) continue
      // a deletion the stream has not delivered yet must count: the binding read again from the log
      yield* attempt(() => directory.refresh("binding", binding.id))
      const fresh = yield* attempt(() => directory.binding(zoneId, subject.clientId, resource.id))
      if (fresh === undefined || !fresh.live || fresh.record.credentialId !== id) continue
      matched = identifier
      break
    }
    if (matched === undefined) return yield* forbidden("not_bound", "no resource of the mandate is bound to this credential for its client")
    facts.resource = matched

    const provider = yield* attempt(() => directory.provider(zoneId, credential.record.providerId))
    if (provider === undefined) return yield* broken("provider_not_found", "the credential's provider is unknown")
    const material = yield* openSealed(database, keks, sealed).pipe(
      Effect.mapError(() => broken("credential_unsealable", "the credential cannot be opened"))
    )
    const value = yield* headerValue(provider.record.valuePrefix, material)
    return { header: provider.record.header, value, expires_at: new Date(p.exp * 1000).toISOString() }
  })

const NO_STORE = { "cache-control": "no-store", pragma: "no-cache" }

export const ReleaseRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(stsSpec)
    const database = yield* Database
    const redis = yield* RedisClient
    const ctx = yield* ExchangeContext
    const keks = yield* keksFrom(vars)
    const signed = requireSignedCall(serviceHmacKeys(vars)).pipe(Effect.provideService(RedisClient, redis))

    yield* router.add("POST", "/internal/v1/credentials/:id/release", Effect.gen(function*() {
      const text = yield* signed
      const req = yield* Req.HttpServerRequest
      const requestId = yield* RequestId
      const id = (yield* HttpRouter.params).id ?? ""
      const started = performance.now()
      const facts: Facts = { zone_id: null, client_id: null, agent_session_id: null, delegation_edge_id: null, resource: null, scope: null, jti: null }
      const outcome = yield* Effect.result(decideRelease(ctx, database, keks, id, text, facts))
      const refusal = outcome._tag === "Success"
        ? undefined
        : outcome.failure._tag === "Refused"
        ? outcome.failure
        : new Refused({ status: 503, error: "temporarily_unavailable", reason: "dependency_unavailable", description: "a dependency is unavailable", decision: "error" })
      if (outcome._tag === "Failure" && outcome.failure._tag === "Unavailable") {
        yield* Effect.logError("credential release failed").pipe(Effect.annotateLogs({ credential_id: id, cause: String(outcome.failure.cause) }))
      }
      const record: Omit<AuditRecord, "id" | "occurred_at"> = {
        ...facts,
        source: "sts",
        kind: "credential_release",
        decision: refusal === undefined ? "allow" : refusal.decision,
        reason: refusal?.reason ?? null,
        request_id: requestId,
        trace_id: traceIdOf(req.headers.traceparent),
        status: refusal?.status ?? 200,
        latency_ms: Math.round((performance.now() - started) * 100) / 100,
        credential_id: ID.test(id) ? id : null
      }
      const recorded = yield* Effect.exit(ctx.audit.append(record))
      if (recorded._tag === "Failure") {
        yield* Effect.logError("audit record not written: refusing").pipe(Effect.annotateLogs({ request_id: requestId, credential_id: id }))
        return Res.jsonUnsafe(
          { error: "temporarily_unavailable", error_description: "the release could not be recorded" },
          { status: 503, headers: NO_STORE }
        )
      }
      yield* Effect.logInfo(refusal === undefined ? "credential released" : "credential release refused").pipe(
        Effect.annotateLogs({ credential_id: id, zone_id: facts.zone_id, client_id: facts.client_id, jti: facts.jti, reason: refusal?.reason ?? null })
      )
      if (outcome._tag === "Success") return Res.jsonUnsafe(outcome.success, { status: 200, headers: NO_STORE })
      const r = refusal!
      const body = r.status === 403 || r.status === 500
        ? { error: r.error, reason: r.reason, error_description: r.description }
        : { error: r.error, error_description: r.description }
      return Res.jsonUnsafe(body, { status: r.status, headers: NO_STORE })
    }))
  }))

/**
 * At start: credentials sealed under a KEK now in ZONE_KEK_PREVIOUS are re-sealed under
 * ZONE_KEK in the background (meanwhile they open with the previous KEK); credentials under a
 * KEK the sts does not hold at all are reported (they are refused with 500 until it is given back).
 */
export const CredentialReseal = Layer.effectDiscard(Effect.gen(function*() {
  const vars = yield* loadSpec(stsSpec)
  const database = yield* Database
  const keks = yield* keksFrom(vars)
  yield* Effect.gen(function*() {
    const lost = yield* credentialsUnderUnknownKeks(database, keks)
    if (lost > 0) {
      yield* Effect.logWarning("credentials sealed under a KEK that is neither ZONE_KEK nor in ZONE_KEK_PREVIOUS cannot be released")
        .pipe(Effect.annotateLogs({ credentials: lost }))
    }
    if (keks.byId.size > 1) {
      const r = yield* resealCredentials(database, keks)
      yield* Effect.logInfo("credentials re-sealed under ZONE_KEK").pipe(Effect.annotateLogs({ resealed: r.resealed, failed: r.failed }))
    }
  }).pipe(
    Effect.catchCause((cause) => Effect.logWarning("credentials: re-seal failed; retried at the next start").pipe(Effect.annotateLogs({ cause: String(cause) }))),
    Effect.forkScoped
  )
}))

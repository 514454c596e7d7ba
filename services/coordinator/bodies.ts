// Request bodies and query strings of the coordinator's routes. Unknown fields that
// existing SDK clients send (e.g. session_sid) are accepted and ignored.
import { Effect, Schema } from "effect"
import { HttpServerRequest as Req } from "effect/http"
import { httpError } from "../../core/http/errors.ts"
import type { Mandate } from "./auth.ts"
import type { SessionView } from "./queries.ts"

const Id = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(128)))
const Instant = Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/u)))
const Ttl = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 1, maximum: 31_536_000 })))
const Words = Schema.Array(Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(256)))).pipe(
  Schema.check(Schema.isMaxLength(100))
)

export const Spawn = Schema.Struct({
  application_id: Id,
  parent_id: Schema.optionalKey(Schema.NullOr(Id)),
  // `service` is what existing SDKs send for a long-lived agent: it behaves as `instance`
  kind: Schema.optionalKey(Schema.Literals(["instance", "service", "ephemeral"])),
  ttl_seconds: Schema.optionalKey(Ttl),
  metadata: Schema.optionalKey(Schema.Record(Schema.String, Schema.Unknown)),
  // sent by existing SDK clients; the session id is always the coordinator's own
  session_sid: Schema.optionalKey(Schema.Unknown)
})

const METADATA_MAX_BYTES = 16 * 1024

export const checkMetadata = (metadata: Readonly<Record<string, unknown>> | undefined) =>
  metadata !== undefined && JSON.stringify(metadata).length > METADATA_MAX_BYTES
    ? Effect.fail(httpError(400, "invalid_request", `metadata must be at most ${METADATA_MAX_BYTES} bytes of JSON`))
    : Effect.void

export const Delegate = Schema.Struct({
  issuer_application_id: Id,
  receiver_application_id: Id,
  source_session_id: Id,
  target_session_id: Id,
  // a list, or one space-separated string as in OAuth
  scopes: Schema.Union([Words, Schema.String.pipe(Schema.check(Schema.isMaxLength(4096)))]),
  constraints: Schema.optionalKey(Schema.Struct({
    resources: Schema.optionalKey(Words),
    actions: Schema.optionalKey(Words),
    max_hops: Schema.optionalKey(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 100 })))),
    max_depth: Schema.optionalKey(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 100 })))),
    expires_at: Schema.optionalKey(Instant)
  })),
  ttl_seconds: Schema.optionalKey(Ttl)
})

export const delegationRequest = (b: typeof Delegate.Type) => {
  const c = b.constraints ?? {}
  const maxHops = c.max_hops ?? c.max_depth // max_depth is an alias older clients send
  return {
    issuerApplicationId: b.issuer_application_id,
    receiverApplicationId: b.receiver_application_id,
    sourceSessionId: b.source_session_id,
    targetSessionId: b.target_session_id,
    scopes: typeof b.scopes === "string" ? b.scopes.split(" ").filter((s) => s !== "") : b.scopes,
    constraints: {
      ...(c.resources ? { resources: c.resources } : {}),
      ...(c.actions ? { actions: c.actions } : {}),
      ...(maxHops === undefined ? {} : { maxHops }),
      ...(c.expires_at ? { expiresAt: new Date(c.expires_at).toISOString() } : {})
    },
    ttlSeconds: b.ttl_seconds
  }
}

/** Applications a mandate acts for: its own, and those named by agent:act-for:<app> scopes. */
export const actingFor = (mandate: Mandate): ReadonlyArray<string> => [
  mandate.clientId,
  ...[...mandate.scopes].filter((s) => s.startsWith("agent:act-for:")).map((s) => s.slice("agent:act-for:".length))
]

// The cursor is the last (created_at, id) of a page, base64url so that clients treat it as opaque.
export const cursorOf = (s: SessionView) => Buffer.from(JSON.stringify([s.created_at, s.id])).toString("base64url")

const parseCursor = (raw: string) => {
  try {
    const v = JSON.parse(Buffer.from(raw, "base64url").toString("utf8")) as unknown
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === "string" && typeof v[1] === "string" && !Number.isNaN(Date.parse(v[0]))) {
      return { createdAt: v[0], id: v[1] }
    }
  } catch {
    // fall through to the error below
  }
  return undefined
}

const searchParams = Effect.gen(function*() {
  const req = yield* Req.HttpServerRequest
  return new URL(req.url, "http://x").searchParams
})

/** The largest page a list returns (existing clients ask for up to 500). */
export const LIST_LIMIT_MAX = 500

export const listQuery = Effect.gen(function*() {
  const q = yield* searchParams
  const limitRaw = q.get("limit") ?? "50"
  const limit = Number(limitRaw)
  if (!/^\d{1,3}$/.test(limitRaw) || limit < 1 || limit > LIST_LIMIT_MAX) {
    return yield* httpError(400, "invalid_request", `limit must be 1-${LIST_LIMIT_MAX}`)
  }
  const status = q.get("status") ?? undefined
  if (status !== undefined && !["active", "suspended", "terminated"].includes(status)) {
    return yield* httpError(400, "invalid_request", "status must be active, suspended or terminated")
  }
  const cursor = q.get("cursor")
  const after = cursor === null ? undefined : parseCursor(cursor)
  if (cursor !== null && after === undefined) return yield* httpError(400, "invalid_request", "malformed cursor")
  const application_id = q.get("application_id") ?? undefined
  return { limit, status, after, application_id }
})

export const directionQuery = Effect.gen(function*() {
  const d = (yield* searchParams).get("direction")
  if (d === null) return undefined
  if (d !== "inbound" && d !== "outbound") return yield* httpError(400, "invalid_request", "direction must be inbound or outbound")
  return d
})

const Reason = Schema.Struct({ reason: Schema.optionalKey(Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(500)))) })

/** A reason from the JSON body ({"reason": …}) or the query string; "requested" when neither gives one. */
export const reasonOf = Effect.gen(function*() {
  const req = yield* Req.HttpServerRequest
  const fromQuery = new URL(req.url, "http://x").searchParams.get("reason")
  const text = yield* req.text
  if (text.trim() === "") {
    if (fromQuery !== null && (fromQuery.length < 1 || fromQuery.length > 500)) return yield* httpError(400, "invalid_request", "reason must be 1-500 characters")
    return fromQuery ?? "requested"
  }
  const body = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => httpError(400, "invalid_request", "malformed JSON body") })
  const parsed = yield* Schema.decodeUnknownEffect(Reason)(body)
  return parsed.reason ?? fromQuery ?? "requested"
})

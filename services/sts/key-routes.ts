// The zone key routes.
//
// GET /.well-known/jwks.json?zone_id=<zone>   public; the zone's published keys
//   200 {keys: [{kty, crv, x, y, kid, alg: "ES256", use: "sig"}, …]}  (next, active and retired
//       keys; never a private member), Cache-Control: public, max-age=JWKS_MAX_AGE_S. A zone the
//       api created that has no key yet gets its first key now (read-your-writes).
//   400 invalid_request  no zone_id
//   404 zone_not_found   a zone the log does not know (or archived without keys), and any
//                        zone_id that cannot be an id; Cache-Control: no-store. The verifiers
//                        (core/mandate/jwks.ts) read a 404 as "unknown zone": the token is
//                        invalid (401) and the zone is negatively cached. An empty set is never
//                        served, since the verifiers read it the same way.
//
// POST /internal/v1/zones/{zone}/keys/rotate   signed (core/internal-call.ts), for the api
//   200 {kid, status: "next", activates_at}  the new key, published now, signing from
//       activates_at (ZONE_KEY_NEXT_LEAD_S later); while a rotation is pending, that one.
//   404 zone_not_found   a zone the log does not know
import { Effect } from "effect"
import { HttpRouter, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { loadSpec } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import { type Answer, errorResponse, httpError } from "../../core/http/errors.ts"
import { requireSignedCall, serviceHmacKeys } from "../../core/internal-call.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { stsSpec } from "./config.ts"
import { zoneInLog } from "./key-store.ts"
import { ZoneKeys } from "./keys.ts"

/** What a zone id can look like (the api's ids and the seed's); anything else is unknown without a query. */
const ZONE_ID = /^[A-Za-z0-9._:-]{1,128}$/u

const notFound = () => {
  const res = errorResponse(404, "zone_not_found", "no such zone")
  return Res.setHeader(res, "cache-control", "no-store")
}

/**
 * A key that exists but cannot be opened, or a ring under too much contention: ours, not the
 * caller's, and never answered by minting another key. 503; the cause is logged.
 */
export const keyErrors = (error: unknown): Answer | undefined => {
  const tag = typeof error === "object" && error !== null && "_tag" in error ? error._tag : undefined
  if (tag === "ZoneKeyUnavailable" || tag === "ConcurrencyExhausted") {
    return { status: 503, code: "temporarily_unavailable", description: "the zone's signing key is unavailable", internal: true }
  }
  return undefined
}

export const KeyRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(stsSpec)
    const keys = yield* ZoneKeys
    const database = yield* Database
    const redis = yield* RedisClient
    const signed = requireSignedCall(serviceHmacKeys(vars)).pipe(Effect.provideService(RedisClient, redis))
    const cacheControl = `public, max-age=${vars.JWKS_MAX_AGE_S}`

    yield* router.addAll([
      HttpRouter.route("GET", "/.well-known/jwks.json", Effect.gen(function*() {
        const req = yield* Req.HttpServerRequest
        const zoneId = new URL(req.url, "http://x").searchParams.get("zone_id")
        if (zoneId === null || zoneId === "") return yield* httpError(400, "invalid_request", "zone_id is required")
        if (!ZONE_ID.test(zoneId)) return notFound()
        const set = yield* keys.jwksOrProvision(zoneId)
        if (set === undefined || set.length === 0) return notFound()
        return Res.jsonUnsafe({ keys: set }, { headers: { "cache-control": cacheControl } })
      })),

      HttpRouter.route("POST", "/internal/v1/zones/:zone/keys/rotate", Effect.gen(function*() {
        yield* signed
        const zoneId = (yield* HttpRouter.params).zone ?? ""
        if (!ZONE_ID.test(zoneId)) return notFound()
        // the api asks for zones it knows; the log is checked so that no one mints keys for a made-up id
        if ((yield* database.query((db) => zoneInLog(db, zoneId))) === "unknown") return notFound()
        const next = yield* keys.rotate(zoneId)
        return Res.jsonUnsafe({ kid: next.kid, status: "next", activates_at: next.activatesAt })
      }))
    ])
  }))

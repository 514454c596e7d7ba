// Mandate verification for the coordinator: every /zones/{zone}/... route accepts only a bearer
// mandate minted by the STS for that zone. Fails closed: when the STS cannot be asked for the
// zone's keys the caller gets 503, never a pass.
//
// The mandate contract (the STS mints exactly this):
//   header   alg  ES256 (EdDSA or RS256 when the zone key in the JWKS says so; never none/HS*)
//            kid  required; names a key in GET ${STS_URL}/.well-known/jwks.json?zone_id=<zone_id>
//   payload  iss                 the STS URL (checked when the verifier is given `issuer`)
//            sub                 the subject: the agent identity acting
//            zone_id             the zone whose key signed it; must match the route's zone
//            client_id           the application the mandate was issued to
//            scope               space-separated scopes; coordinator routes need agent:lifecycle,
//                                acting for another application needs agent:act-for:<application id>
//            exp, iat            NumericDate seconds; exp/nbf checked with 5 s tolerance
//            jti                 unique id of this mandate
//            agent_session_id    optional: the agent session the mandate belongs to
//            delegation_edge_id  optional: the delegation edge it was derived through
import { Effect, Schema } from "effect"
import { createRemoteJWKSet, customFetch, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTPayload, type RemoteJWKSet } from "jose"
import type { Answer, ErrorMapper } from "../../core/http/errors.ts"

export class AuthError extends Schema.TaggedError<AuthError>()("AuthError", {
  status: Schema.Number,
  code: Schema.String,
  description: Schema.String
}) {}

const invalidToken = (description: string) => new AuthError({ status: 401, code: "invalid_token", description })

export interface Mandate {
  readonly zoneId: string
  readonly clientId: string
  readonly subject: string
  readonly scopes: ReadonlySet<string>
  readonly jti: string
  readonly expiresAt: Date
  readonly agentSessionId?: string
  readonly delegationEdgeId?: string
}

export const LIFECYCLE_SCOPE = "agent:lifecycle"
export const ALLOWED_ALGORITHMS = ["ES256", "EdDSA", "RS256"] as const
/** A mandate carries a handful of claims; anything near this is not one of ours. */
export const MAX_TOKEN_BYTES = 8 * 1024
const CLOCK_TOLERANCE_SECONDS = 5

// The zone id ends up in the JWKS URL, and it is read from a token nobody has verified yet:
// only this alphabet may reach a fetch, so no token can steer us to another path or host.
const ZONE_ID = /^[A-Za-z0-9._:-]{1,128}$/
export const isZoneId = (zone: unknown): zone is string => typeof zone === "string" && ZONE_ID.test(zone)

// RFC 6750 b64token; a JWS compact token is three base64url parts, checked by jose later.
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i

/** The token of an `Authorization: Bearer` header, or 401 invalid_token. */
export const parseBearer = (header: string | null | undefined): string => {
  if (header === undefined || header === null || header === "") throw invalidToken("missing bearer mandate")
  if (header.length > MAX_TOKEN_BYTES + 16) throw invalidToken("mandate too large")
  const token = BEARER.exec(header)?.[1]
  if (token === undefined) throw invalidToken("malformed Authorization header; expected Bearer <mandate>")
  return token
}

export const scopesOf = (scope: string): ReadonlySet<string> => new Set(scope.split(" ").filter((s) => s !== ""))

export const actsFor = (mandate: Mandate, applicationId: string): boolean =>
  applicationId === mandate.clientId || mandate.scopes.has(`agent:act-for:${applicationId}`)

export const requireActsFor = (mandate: Mandate, applicationId: string): void => {
  if (!actsFor(mandate, applicationId)) {
    throw new AuthError({ status: 403, code: "forbidden", description: "the mandate may not act for this application" })
  }
}

/** For the coordinator's error mapping: an AuthError answers with its own status and code. */
export const authErrorAnswer: ErrorMapper = (error): Answer | undefined =>
  error instanceof AuthError
    ? { status: error.status, code: error.code, description: error.description, internal: error.status >= 500 }
    : undefined

type FetchLike = (url: string, init: RequestInit) => Promise<Response>

export interface MandateVerifierOptions {
  /** Base URL of the STS, e.g. http://sts:8080 */
  readonly stsUrl: string
  /** Least time between two JWKS fetches of a zone triggered by an unknown kid; also how long an unknown zone is remembered. */
  readonly cooldownMs?: number
  /** Cached zone keys are refetched after this age. */
  readonly cacheMaxAgeMs?: number
  readonly timeoutMs?: number
  /** Zones whose key sets are kept; the least recently used is dropped beyond this. */
  readonly maxZones?: number
  /** When set, `iss` must equal it. */
  readonly issuer?: string
  readonly fetch?: FetchLike
}

export interface MandateVerifier {
  /** The mandate, or an AuthError: 401 invalid_token, 403 zone_mismatch/missing_scope, 503 temporarily_unavailable. */
  readonly verify: (token: string, routeZone: string) => Promise<Mandate>
  /** `verify` on the raw Authorization header. */
  readonly verifyAuthorization: (header: string | null | undefined, routeZone: string) => Promise<Mandate>
}

// Thrown from inside jose's fetch so the verifier can tell "the STS does not know this zone"
// (the token is invalid) from "the STS did not answer" (we cannot know: 503).
class StsAnswer extends Error {
  readonly unknownZone: boolean
  constructor(unknownZone: boolean, message: string) {
    super(message)
    this.unknownZone = unknownZone
  }
}

const guardedFetch = (base: FetchLike) => async (url: string, init: RequestInit): Promise<Response> => {
  let res: Response
  try {
    res = await base(url, init)
  } catch (cause) {
    const timedOut = cause instanceof Error && (cause.name === "TimeoutError" || cause.name === "AbortError")
    throw new StsAnswer(false, timedOut ? "the STS did not answer in time" : "the STS is unreachable")
  }
  if (res.status === 200) return res
  await res.body?.cancel().catch(() => {})
  if (res.status === 404) throw new StsAnswer(true, "unknown zone")
  throw new StsAnswer(false, `the STS answered ${res.status}`)
}

const unavailable = (why: string) =>
  new AuthError({ status: 503, code: "temporarily_unavailable", description: `cannot verify mandates now: ${why}` })

// jose's own messages can quote claim values; these are fixed texts per failure.
const describeJoseFailure = (e: errors.JOSEError): string => {
  switch (e.code) {
    case "ERR_JWT_EXPIRED":
      return "mandate expired"
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return "mandate signature invalid"
    case "ERR_JWKS_NO_MATCHING_KEY":
    case "ERR_JWKS_MULTIPLE_MATCHING_KEYS":
      return "mandate signing key unknown"
    case "ERR_JOSE_ALG_NOT_ALLOWED":
    case "ERR_JOSE_NOT_SUPPORTED":
      return "mandate algorithm not allowed"
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      return `mandate claim ${(e as errors.JWTClaimValidationFailed).claim} invalid`
    default:
      return "malformed mandate"
  }
}

const optionalString = (payload: JWTPayload, claim: string): string | undefined => {
  const value = payload[claim]
  if (value === undefined) return undefined
  if (typeof value !== "string" || value === "") throw invalidToken(`mandate claim ${claim} invalid`)
  return value
}

const requiredString = (payload: JWTPayload, claim: string): string => {
  const value = optionalString(payload, claim)
  if (value === undefined) throw invalidToken(`mandate claim ${claim} missing`)
  return value
}

const toMandate = (payload: JWTPayload): Mandate => {
  requiredString(payload, "iss")
  const agentSessionId = optionalString(payload, "agent_session_id")
  const delegationEdgeId = optionalString(payload, "delegation_edge_id")
  if (typeof payload.scope !== "string") throw invalidToken("mandate claim scope missing")
  return {
    zoneId: requiredString(payload, "zone_id"),
    clientId: requiredString(payload, "client_id"),
    subject: requiredString(payload, "sub"),
    scopes: scopesOf(payload.scope),
    jti: requiredString(payload, "jti"),
    // jwtVerify was told exp is required and checked it is a number
    expiresAt: new Date((payload.exp as number) * 1000),
    ...(agentSessionId === undefined ? {} : { agentSessionId }),
    ...(delegationEdgeId === undefined ? {} : { delegationEdgeId })
  }
}

interface ZoneKeys {
  readonly keys: RemoteJWKSet
  /** Until then the STS said it has no such zone; no fetch is made for it. */
  unknownUntil: number
}

export const makeMandateVerifier = (options: MandateVerifierOptions): MandateVerifier => {
  const { cooldownMs = 30_000, cacheMaxAgeMs = 600_000, timeoutMs = 5_000, maxZones = 1_000 } = options
  const base = options.stsUrl.replace(/\/+$/, "")
  const fetchImpl = guardedFetch(options.fetch ?? ((url, init) => fetch(url, init)))
  const zones = new Map<string, ZoneKeys>()

  const keysOf = (zone: string): ZoneKeys => {
    const found = zones.get(zone)
    if (found) {
      // re-insert: Map order is then least recently used first
      zones.delete(zone)
      zones.set(zone, found)
      return found
    }
    const url = new URL(`${base}/.well-known/jwks.json?zone_id=${encodeURIComponent(zone)}`)
    const created: ZoneKeys = {
      keys: createRemoteJWKSet(url, {
        cooldownDuration: cooldownMs,
        cacheMaxAge: cacheMaxAgeMs,
        timeoutDuration: timeoutMs,
        [customFetch]: fetchImpl
      }),
      unknownUntil: 0
    }
    zones.set(zone, created)
    if (zones.size > maxZones) zones.delete(zones.keys().next().value as string)
    return created
  }

  const verifySignature = async (token: string, zone: string): Promise<JWTPayload> => {
    const entry = keysOf(zone)
    if (entry.unknownUntil > Date.now()) throw invalidToken("unknown zone")
    try {
      const { payload } = await jwtVerify(token, entry.keys, {
        algorithms: [...ALLOWED_ALGORITHMS],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        requiredClaims: ["exp", "iat", "iss", "sub", "jti"],
        ...(options.issuer === undefined ? {} : { issuer: options.issuer })
      })
      return payload
    } catch (e) {
      if (e instanceof StsAnswer) {
        if (!e.unknownZone) throw unavailable(e.message)
        entry.unknownUntil = Date.now() + cooldownMs
        throw invalidToken("unknown zone")
      }
      if (e instanceof errors.JWKSTimeout) throw unavailable("the STS did not answer in time")
      // the STS answered 200 with something that is not a key set: its fault, not the caller's
      if (e instanceof errors.JWKSInvalid || (e instanceof errors.JOSEError && e.code === "ERR_JOSE_GENERIC")) {
        throw unavailable("the STS served an invalid key set")
      }
      if (e instanceof errors.JOSEError) throw invalidToken(describeJoseFailure(e))
      throw invalidToken("mandate could not be verified")
    }
  }

  const verify = async (token: string, routeZone: string): Promise<Mandate> => {
    if (token.length > MAX_TOKEN_BYTES) throw invalidToken("mandate too large")
    let unverified: JWTPayload
    let kid: unknown
    try {
      unverified = decodeJwt(token)
      kid = decodeProtectedHeader(token).kid
    } catch {
      throw invalidToken("malformed mandate")
    }
    if (unverified.zone_id === undefined) throw invalidToken("mandate claim zone_id missing")
    if (!isZoneId(unverified.zone_id)) throw invalidToken("mandate claim zone_id invalid")
    // without a kid, rotation (two keys served at once) would make key selection ambiguous
    if (typeof kid !== "string" || kid === "") throw invalidToken("mandate header kid missing")
    const mandate = toMandate(await verifySignature(token, unverified.zone_id))
    if (mandate.zoneId !== routeZone) {
      throw new AuthError({ status: 403, code: "zone_mismatch", description: "the mandate was issued for another zone" })
    }
    if (!mandate.scopes.has(LIFECYCLE_SCOPE)) {
      throw new AuthError({ status: 403, code: "missing_scope", description: `the mandate lacks the ${LIFECYCLE_SCOPE} scope` })
    }
    return mandate
  }

  return {
    verify,
    verifyAuthorization: async (header, routeZone) => verify(parseBearer(header), routeZone)
  }
}

/** The verifier as an Effect for the HTTP layer; any other failure still fails closed, as 401. */
export const authenticate = (verifier: MandateVerifier, header: string | null | undefined, routeZone: string) =>
  Effect.tryPromise({
    try: () => verifier.verifyAuthorization(header, routeZone),
    catch: (e) => (e instanceof AuthError ? e : invalidToken("mandate could not be verified"))
  })

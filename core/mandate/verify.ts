// Mandate verification: a bearer mandate is a compact JWS minted by the issuer with a per-zone
// key, whose public keys are served at `${jwksBaseUrl}/.well-known/jwks.json?zone_id=<zone_id>`.
// Fails closed: when the issuer cannot be asked for the zone's keys the caller gets 503, never
// a pass. Each service states which mandates it accepts (`accept`) and adds its own rules
// (scopes, who may act for whom) on the Mandate it gets back.
//
// The mandate contract (the issuer mints exactly this):
//   header   alg  ES256 (EdDSA or RS256 when the zone key in the JWKS says so; never none/HS*)
//            kid  required; names a key in the zone's JWKS
//   payload  iss                 the issuer URL; must equal the configured issuer
//            use                 "ambient" | "per_call"; must be the one the caller accepts
//            aud                 ambient: the issuer URL; per_call: the granted resource identifiers
//            sub                 the subject: the agent identity acting
//            zone_id             the zone whose key signed it; must match the expected zone
//            client_id           the application the mandate was issued to
//            scope               space-separated scopes
//            exp, iat            NumericDate seconds; exp/nbf/iat checked with 5 s tolerance
//            nbf                 optional NumericDate
//            jti                 unique id of this mandate
//            agent_session_id    optional: the agent session the mandate belongs to
//            delegation_edge_id  optional: the delegation edge it was derived through
// Encoding: exactly three unpadded, canonical base64url parts (RFC 7515 §2); anything else is
// refused before it is looked at further.
import { Effect, Schema } from "effect"
import { errors, jwtVerify } from "jose"
import type { Answer, ErrorMapper } from "../http/errors.ts"
import { type FetchLike, type JwksCache, makeJwksCache } from "./jwks.ts"

export class AuthError extends Schema.TaggedError<AuthError>()("AuthError", {
  status: Schema.Number,
  code: Schema.String,
  description: Schema.String,
  /** For the log only (503s): what the key server or the fetch budget did. Never a token. */
  reason: Schema.optionalKey(Schema.String)
}) {}

export const invalidToken = (description: string) => new AuthError({ status: 401, code: "invalid_token", description })

export type MandateUse = "ambient" | "per_call"

/** Which mandates a caller of the verifier accepts. */
export type Accept =
  /** Ambient mandates whose `aud` contains `audience` (the issuer URL). */
  | { readonly use: "ambient"; readonly audience: string }
  /** Per-call mandates whose `aud` contains `resource`. */
  | { readonly use: "per_call"; readonly resource: string }

export interface Mandate {
  readonly zoneId: string
  readonly clientId: string
  readonly subject: string
  readonly issuer: string
  readonly use: MandateUse
  readonly audience: ReadonlyArray<string>
  readonly scopes: ReadonlySet<string>
  readonly jti: string
  readonly issuedAt: Date
  readonly expiresAt: Date
  readonly agentSessionId?: string
  readonly delegationEdgeId?: string
  /** Every edge a delegated mandate was derived through (`delegation_path`), root first. */
  readonly delegationPath?: ReadonlyArray<string>
}

export const ALLOWED_ALGORITHMS = ["ES256", "EdDSA", "RS256"] as const
/** A mandate carries a handful of claims; anything near this is not one of ours. */
export const MAX_TOKEN_BYTES = 8 * 1024
export const CLOCK_TOLERANCE_SECONDS = 5

// The zone id ends up in the JWKS URL, and it is read from a token nobody has verified yet:
// only this alphabet may reach a fetch, so no token can steer us to another path or host.
const ZONE_ID = /^[A-Za-z0-9._:-]{1,128}$/
export const isZoneId = (zone: unknown): zone is string => typeof zone === "string" && ZONE_ID.test(zone)

// RFC 6750 b64token; whether it is a canonical JWS is decided by the verifier.
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

/** For a service's error mapping: an AuthError answers with its own status and code. */
export const authErrorAnswer: ErrorMapper = (error): Answer | undefined =>
  error instanceof AuthError
    ? { status: error.status, code: error.code, description: error.description, internal: error.status >= 500 }
    : undefined

/**
 * For a caller that learns the zone from the mandate itself (the gateway: the zone's keys
 * still have to verify it, and everything after is looked up within that zone).
 */
export const ANY_ZONE: unique symbol = Symbol("any zone")
export type AnyZone = typeof ANY_ZONE

export interface MandateVerifierOptions {
  /** Base URL of the key server (often the issuer itself); a zone's keys are at `/.well-known/jwks.json?zone_id=`. */
  readonly jwksBaseUrl: string
  /** The `iss` every accepted mandate must carry. */
  readonly issuer: string
  readonly accept: Accept
  /** Least time between two JWKS fetches of a zone triggered by an unknown kid. Default 30 s. */
  readonly cooldownMs?: number
  /** How long a zone whose JWKS answered 404 or was empty is refused without a fetch. Default: cooldownMs. */
  readonly unknownZoneTtlMs?: number
  /** Cached zone keys are refetched after this age. Default 10 min. */
  readonly cacheMaxAgeMs?: number
  readonly timeoutMs?: number
  /** Zones whose key sets are kept; the least recently used is dropped beyond this. Default 1,000. */
  readonly maxZones?: number
  /** Unknown zones remembered. Default 10,000. */
  readonly maxUnknownZones?: number
  /** JWKS fetches per second across all zones, sustained. Default 20. */
  readonly fetchesPerSecond?: number
  /** JWKS fetches allowed in a burst. Default 50. */
  readonly fetchBurst?: number
  readonly fetch?: FetchLike
  /** Milliseconds since the epoch; tests move it. */
  readonly now?: () => number
  /** Refuse a header without `typ: JWT` (by default only another `typ` is refused). */
  readonly requireTyp?: boolean
}

export interface MandateVerifier {
  /**
   * The mandate, or an AuthError: 401 invalid_token, 403 zone_mismatch, 503 temporarily_unavailable.
   * `accept` overrides the verifier's own for this call (the gateway names the resource per request).
   */
  readonly verify: (token: string, expectedZone: string | AnyZone, accept?: Accept) => Promise<Mandate>
  /** `verify` on the raw Authorization header. */
  readonly verifyAuthorization: (header: string | null | undefined, expectedZone: string) => Promise<Mandate>
}

export interface MandateVerifierWithStats extends MandateVerifier {
  readonly stats: JwksCache["stats"]
}

const unavailable = (description: string, reason?: string) =>
  new AuthError({
    status: 503,
    code: "temporarily_unavailable",
    description: `cannot verify mandates now: ${description}`,
    ...(reason === undefined ? {} : { reason })
  })

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

const BASE64URL = /^[A-Za-z0-9_-]+$/

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

/**
 * The one spelling of some bytes in unpadded base64url: the alphabet only, no length that
 * leaves a lone character, and no bits set past the last byte (a "twin" spelling otherwise
 * decodes to the same bytes). Decided from the text, without decoding and re-encoding it.
 */
export const isCanonicalBase64url = (part: string): boolean => {
  if (!BASE64URL.test(part)) return false
  const rest = part.length % 4
  if (rest === 0) return true
  if (rest === 1) return false
  const last = ALPHABET.indexOf(part[part.length - 1]!)
  // 2 characters carry 1 byte (4 bits unused), 3 carry 2 bytes (2 bits unused)
  return (last & (rest === 2 ? 0x0f : 0x03)) === 0
}

/** A JSON object from one canonical base64url part, or undefined. */
const decodePart = (part: string): Record<string, unknown> | undefined => {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, "base64url").toString("utf8"))
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

type Claims = Record<string, unknown>

const optionalString = (payload: Claims, claim: string): string | undefined => {
  const value = payload[claim]
  if (value === undefined) return undefined
  if (typeof value !== "string" || value === "") throw invalidToken(`mandate claim ${claim} invalid`)
  return value
}

const requiredString = (payload: Claims, claim: string): string => {
  const value = optionalString(payload, claim)
  if (value === undefined) throw invalidToken(`mandate claim ${claim} missing`)
  return value
}

const numericDate = (payload: Claims, claim: string, required: boolean): number | undefined => {
  const value = payload[claim]
  if (value === undefined) {
    if (required) throw invalidToken(`mandate claim ${claim} missing`)
    return undefined
  }
  if (typeof value !== "number" || !Number.isFinite(value)) throw invalidToken(`mandate claim ${claim} invalid`)
  return value
}

const audienceOf = (payload: Claims): ReadonlyArray<string> => {
  const aud = payload.aud
  if (aud === undefined) throw invalidToken("mandate claim aud missing")
  const list = typeof aud === "string" ? [aud] : aud
  if (!Array.isArray(list) || list.length === 0 || !list.every((a) => typeof a === "string" && a !== "")) {
    throw invalidToken("mandate claim aud invalid")
  }
  return list as ReadonlyArray<string>
}

/**
 * Every claim rule that needs no key: checked before any JWKS fetch, so that a mandate this
 * caller would refuse anyway never costs one. The signature is checked on the same bytes after.
 */
const readClaims = (payload: Claims, issuer: string, accept: Accept, nowSeconds: number): Mandate => {
  const iss = requiredString(payload, "iss")
  if (iss !== issuer) throw invalidToken("mandate issuer not accepted")
  const use = payload.use
  if (use === undefined) throw invalidToken("mandate claim use missing")
  if (use !== "ambient" && use !== "per_call") throw invalidToken("mandate claim use invalid")
  if (use !== accept.use) throw invalidToken(`${use} mandate not accepted here`)
  const audience = audienceOf(payload)
  const wanted = accept.use === "ambient" ? accept.audience : accept.resource
  if (!audience.includes(wanted)) throw invalidToken("mandate audience not accepted here")

  const iat = numericDate(payload, "iat", true) as number
  const exp = numericDate(payload, "exp", true) as number
  const nbf = numericDate(payload, "nbf", false)
  if (iat > nowSeconds + CLOCK_TOLERANCE_SECONDS) throw invalidToken("mandate issued in the future")
  if (exp <= nowSeconds - CLOCK_TOLERANCE_SECONDS) throw invalidToken("mandate expired")
  if (nbf !== undefined && nbf > nowSeconds + CLOCK_TOLERANCE_SECONDS) throw invalidToken("mandate not yet valid")

  const agentSessionId = optionalString(payload, "agent_session_id")
  const delegationEdgeId = optionalString(payload, "delegation_edge_id")
  const path = payload.delegation_path
  if (path !== undefined && (!Array.isArray(path) || !path.every((e) => typeof e === "string" && e !== ""))) {
    throw invalidToken("mandate claim delegation_path invalid")
  }
  const subject = requiredString(payload, "sub")
  const clientId = requiredString(payload, "client_id")
  const jti = requiredString(payload, "jti")
  if (payload.scope === undefined) throw invalidToken("mandate claim scope missing")
  if (typeof payload.scope !== "string") throw invalidToken("mandate claim scope invalid")
  return {
    zoneId: requiredString(payload, "zone_id"),
    clientId,
    subject,
    issuer: iss,
    use,
    audience,
    scopes: scopesOf(payload.scope),
    jti,
    issuedAt: new Date(iat * 1000),
    expiresAt: new Date(exp * 1000),
    ...(agentSessionId === undefined ? {} : { agentSessionId }),
    ...(delegationEdgeId === undefined ? {} : { delegationEdgeId }),
    ...(path === undefined ? {} : { delegationPath: path as ReadonlyArray<string> })
  }
}

export const makeMandateVerifier = (options: MandateVerifierOptions): MandateVerifierWithStats => {
  const cooldownMs = options.cooldownMs ?? 30_000
  const now = options.now ?? Date.now
  const { issuer } = options
  const jwks = makeJwksCache({
    baseUrl: options.jwksBaseUrl,
    cooldownMs,
    cacheMaxAgeMs: options.cacheMaxAgeMs ?? 600_000,
    unknownZoneTtlMs: options.unknownZoneTtlMs ?? cooldownMs,
    timeoutMs: options.timeoutMs ?? 5_000,
    maxZones: options.maxZones ?? 1_000,
    maxUnknownZones: options.maxUnknownZones ?? 10_000,
    fetchesPerSecond: options.fetchesPerSecond ?? 20,
    fetchBurst: options.fetchBurst ?? 50,
    fetch: options.fetch ?? ((url, init) => fetch(url, init)),
    now
  })

  const verify = async (token: string, expectedZone: string | AnyZone, accept: Accept = options.accept): Promise<Mandate> => {
    if (token.length > MAX_TOKEN_BYTES) throw invalidToken("mandate too large")
    const parts = token.split(".")
    if (parts.length !== 3) throw invalidToken("malformed mandate")
    for (const part of parts) {
      // jose would take padding and skip stray characters; one mandate has one spelling
      if (!isCanonicalBase64url(part)) {
        throw invalidToken("mandate is not canonical base64url")
      }
    }
    const header = decodePart(parts[0] as string)
    const payload = decodePart(parts[1] as string)
    if (header === undefined || payload === undefined) throw invalidToken("malformed mandate")
    if (!(ALLOWED_ALGORITHMS as ReadonlyArray<unknown>).includes(header.alg)) throw invalidToken("mandate algorithm not allowed")
    // keys named or carried by the token itself: ours never has them, and none is ever fetched or used
    for (const h of ["jku", "x5u", "jwk", "x5c", "crit"]) if (h in header) throw invalidToken(`mandate header ${h} not accepted`)
    // a JWS of another type (an ID token, a logout token) is not a mandate, whatever it claims
    const typ = header.typ
    if (typ === undefined ? options.requireTyp === true : typeof typ !== "string" || typ.toUpperCase() !== "JWT") {
      throw invalidToken("mandate header typ not accepted")
    }
    // without a kid, rotation (two keys served at once) would make key selection ambiguous
    const kid = header.kid
    if (typeof kid !== "string" || kid === "") throw invalidToken("mandate header kid missing")
    if (payload.zone_id === undefined) throw invalidToken("mandate claim zone_id missing")
    if (!isZoneId(payload.zone_id)) throw invalidToken("mandate claim zone_id invalid")
    const zone = payload.zone_id
    const mandate = readClaims(payload, issuer, accept, Math.floor(now() / 1000))

    const found = await jwks.keysFor(zone, kid)
    if (found._tag === "UnknownZone") throw invalidToken("unknown zone")
    if (found._tag === "Unavailable") {
      throw unavailable(found.description, found.reason === undefined ? undefined : `zone ${zone}: ${found.reason}`)
    }
    try {
      await jwtVerify(token, found.keys, {
        algorithms: [...ALLOWED_ALGORITHMS],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        currentDate: new Date(now()),
        requiredClaims: ["exp", "iat", "iss", "sub", "jti", "aud"],
        issuer,
        audience: accept.use === "ambient" ? accept.audience : accept.resource
      })
    } catch (e) {
      // the issuer answered 200 with keys that cannot be used: its fault, not the caller's
      if (e instanceof errors.JWKSInvalid || (e instanceof errors.JOSEError && e.code === "ERR_JOSE_GENERIC")) {
        throw unavailable("the key server served an invalid key set", `zone ${zone}: a served key could not be used (${e.code})`)
      }
      if (e instanceof errors.JOSEError) throw invalidToken(describeJoseFailure(e))
      throw invalidToken("mandate could not be verified")
    }
    if (expectedZone !== ANY_ZONE && mandate.zoneId !== expectedZone) {
      throw new AuthError({ status: 403, code: "zone_mismatch", description: "the mandate was issued for another zone" })
    }
    return mandate
  }

  return {
    verify,
    verifyAuthorization: async (header, expectedZone) => verify(parseBearer(header), expectedZone),
    stats: jwks.stats
  }
}

/**
 * The verifier as an Effect for the HTTP layer. A 503 logs why (the key server's answer or the
 * fetch budget), never the token; any other failure still fails closed, as 401.
 */
export const authenticate = (verifier: MandateVerifier, header: string | null | undefined, expectedZone: string) =>
  Effect.tryPromise({
    try: () => verifier.verifyAuthorization(header, expectedZone),
    catch: (e) => (e instanceof AuthError ? e : invalidToken("mandate could not be verified"))
  }).pipe(
    Effect.tapError((e) =>
      e.status >= 500 && e.reason !== undefined
        ? Effect.logWarning("mandate verification unavailable").pipe(
          Effect.annotateLogs({ reason: e.reason, description: e.description })
        )
        : Effect.void
    )
  )

// The token endpoint's request (RFC 6749 §4.4, RFC 8693 §2.1), parsed and checked before
// anything is looked up: form-encoded, each parameter at most once (but `resource` and
// `audience`, which RFC 8693 lets repeat), known grant and token types only, sizes bounded.
// Errors are RFC 6749 JSON and never echo a secret or a token.

export const GRANT_CLIENT_CREDENTIALS = "client_credentials"
export const GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
export const TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
export const TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
const SUBJECT_TOKEN_TYPES = new Set([TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS])

/** 64 KiB: far above any real request; the endpoint refuses larger bodies before parsing. */
export const TOKEN_BODY_MAX_BYTES = 64 * 1024

/** Lifetimes (seconds): a per-call mandate serves one call, an ambient one a working session. */
export const PER_CALL_TTL_MAX = 15 * 60
export const AMBIENT_TTL_MAX = 60 * 60
export const DEFAULT_TTL = 15 * 60

/** An RFC 6749 §5.2 error: its status, code and a description that names no secret. */
export class OAuthError extends Error {
  readonly status: number
  readonly error: string
  readonly description: string
  /** access_denied: why (session_terminated, the policy's reason…). */
  readonly reason: string | undefined
  constructor(status: number, error: string, description: string, reason?: string) {
    super(`${error}: ${description}`)
    this.status = status
    this.error = error
    this.description = description
    this.reason = reason
  }
}

export const invalidRequest = (description: string) => new OAuthError(400, "invalid_request", description)

export interface TokenRequest {
  readonly grantType: "client_credentials" | "token_exchange"
  readonly zoneId: string | undefined
  readonly applicationId: string | undefined
  readonly clientSecret: string | undefined
  /** How the client presented its secret: Basic gets a Basic challenge on failure (RFC 6749 §5.2). */
  readonly basicAuth: boolean
  readonly subjectToken: string | undefined
  readonly actorToken: string | undefined
  readonly resources: ReadonlyArray<string>
  readonly audiences: ReadonlyArray<string>
  /** undefined: no `scope` parameter (the widest allowed is granted). */
  readonly scopes: ReadonlyArray<string> | undefined
  readonly ttlSeconds: number | undefined
  readonly agentSessionId: string | undefined
  readonly delegationEdgeId: string | undefined
  readonly requestedTokenType: string | undefined
}

const REPEATABLE = new Set(["resource", "audience"])
const KNOWN = new Set([
  "grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type", "resource", "audience", "scope",
  "requested_token_type", "zone_id", "application_id", "client_id", "client_secret", "ttl_seconds", "agent_session_id",
  "delegation_edge_id"
])
const ID = /^[A-Za-z0-9._:-]{1,128}$/
const SCOPE = /^[\x21\x23-\x5b\x5d-\x7e]{1,200}$/ // RFC 6749 §3.3 scope-token
const RESOURCE = /^[a-z0-9][a-z0-9:_.-]{0,127}$/
const TOKEN_MAX = 8 * 1024

const basic = (authorization: string | undefined): { id: string; secret: string } | undefined => {
  const m = /^Basic ([A-Za-z0-9+/=]{1,2048})$/i.exec(authorization ?? "")
  if (!m) return undefined
  const decoded = Buffer.from(m[1]!, "base64").toString("utf8")
  const colon = decoded.indexOf(":")
  if (colon < 0) throw invalidRequest("malformed HTTP Basic credentials")
  // RFC 6749 §2.3.1: both parts are form-urlencoded before base64
  const dec = (s: string) => {
    try {
      return decodeURIComponent(s.replace(/\+/g, " "))
    } catch {
      throw invalidRequest("malformed HTTP Basic credentials")
    }
  }
  return { id: dec(decoded.slice(0, colon)), secret: dec(decoded.slice(colon + 1)) }
}

/** Parses and checks a token request; throws OAuthError. */
export const parseTokenRequest = (body: string, contentType: string | undefined, authorization: string | undefined): TokenRequest => {
  if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(contentType ?? "")) {
    throw invalidRequest("the body must be application/x-www-form-urlencoded")
  }
  const form = new URLSearchParams(body)
  const single = new Map<string, string>()
  const multi = new Map<string, Array<string>>()
  for (const [k, v] of form) {
    if (!KNOWN.has(k)) continue // RFC 6749 §3.2: unknown parameters are ignored
    if (REPEATABLE.has(k)) {
      const list = multi.get(k) ?? []
      list.push(v)
      multi.set(k, list)
    } else if (single.has(k)) {
      throw invalidRequest(`parameter ${k} is repeated`)
    } else {
      single.set(k, v)
    }
  }
  const get = (k: string) => {
    const v = single.get(k)
    return v === undefined || v === "" ? undefined : v
  }
  const grant = get("grant_type")
  if (grant === undefined) throw invalidRequest("grant_type is required")
  if (grant !== GRANT_CLIENT_CREDENTIALS && grant !== GRANT_TOKEN_EXCHANGE) {
    throw new OAuthError(400, "unsupported_grant_type", "grant_type must be client_credentials or token-exchange")
  }
  const subjectToken = get("subject_token")
  const subjectType = get("subject_token_type")
  if (grant === GRANT_CLIENT_CREDENTIALS && subjectToken !== undefined) throw invalidRequest("client_credentials takes no subject_token")
  if (subjectToken !== undefined) {
    if (subjectType === undefined) throw invalidRequest("subject_token_type is required with subject_token")
    if (!SUBJECT_TOKEN_TYPES.has(subjectType)) throw invalidRequest("unsupported subject_token_type")
    if (subjectToken.length > TOKEN_MAX) throw invalidRequest("subject_token is too long")
  } else if (subjectType !== undefined) {
    throw invalidRequest("subject_token_type without subject_token")
  }
  const actorToken = get("actor_token")
  const actorType = get("actor_token_type")
  if (actorToken !== undefined) {
    if (actorType === undefined) throw invalidRequest("actor_token_type is required with actor_token")
    if (!SUBJECT_TOKEN_TYPES.has(actorType)) throw invalidRequest("unsupported actor_token_type")
    if (actorToken.length > TOKEN_MAX) throw invalidRequest("actor_token is too long")
  } else if (actorType !== undefined) {
    throw invalidRequest("actor_token_type without actor_token")
  }
  const requested = get("requested_token_type")
  if (requested !== undefined && requested !== TOKEN_TYPE_JWT && requested !== TOKEN_TYPE_ACCESS) {
    throw invalidRequest("unsupported requested_token_type")
  }
  const fromBasic = basic(authorization)
  const formId = get("application_id") ?? get("client_id")
  const formSecret = get("client_secret")
  if (fromBasic && (formSecret !== undefined || (formId !== undefined && formId !== fromBasic.id))) {
    // RFC 6749 §2.3: one authentication method per request
    throw invalidRequest("client credentials given both in Authorization and in the body")
  }
  const applicationId = fromBasic?.id ?? formId
  const clientSecret = fromBasic?.secret ?? formSecret
  for (const [name, v] of [["zone_id", get("zone_id")], ["application_id", applicationId], ["agent_session_id", get("agent_session_id")], ["delegation_edge_id", get("delegation_edge_id")]] as const) {
    if (v !== undefined && !ID.test(v)) throw invalidRequest(`${name} is malformed`)
  }
  if (clientSecret !== undefined && clientSecret.length > 512) throw new OAuthError(401, "invalid_client", "client authentication failed")
  const resources = [...new Set(multi.get("resource") ?? [])]
  if (resources.length > 32) throw invalidRequest("at most 32 resources")
  for (const r of resources) if (!RESOURCE.test(r)) throw new OAuthError(400, "invalid_target", "a resource identifier is malformed")
  const audiences = [...new Set(multi.get("audience") ?? [])]
  if (audiences.some((a) => a.length > 1024)) throw invalidRequest("audience is too long")
  const scopeRaw = single.get("scope")
  let scopes: Array<string> | undefined
  if (scopeRaw !== undefined) {
    scopes = [...new Set(scopeRaw.split(" ").filter((s) => s !== ""))]
    if (scopes.length > 100 || scopes.some((s) => !SCOPE.test(s))) throw new OAuthError(400, "invalid_scope", "malformed scope")
  }
  const ttlRaw = get("ttl_seconds")
  let ttlSeconds: number | undefined
  if (ttlRaw !== undefined) {
    if (!/^\d{1,7}$/.test(ttlRaw) || Number(ttlRaw) < 1) throw invalidRequest("ttl_seconds must be a positive integer")
    ttlSeconds = Number(ttlRaw)
  }
  return {
    grantType: grant === GRANT_CLIENT_CREDENTIALS ? "client_credentials" : "token_exchange",
    zoneId: get("zone_id"),
    applicationId,
    clientSecret,
    basicAuth: fromBasic !== undefined,
    subjectToken,
    actorToken,
    resources,
    audiences,
    scopes,
    ttlSeconds,
    agentSessionId: get("agent_session_id"),
    delegationEdgeId: get("delegation_edge_id"),
    requestedTokenType: requested
  }
}

// The per-call exchange (RFC 8693) at the sts: the subject token is the ambient mandate,
// which authenticates the application by itself (no client secret in the agent).
import { CaracalConfigError } from "./errors.ts"
import { call } from "./http.ts"

export const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
export const TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"

export interface Mandate {
  readonly accessToken: string
  readonly expiresIn: number
  readonly scope: string
  readonly resources: ReadonlyArray<string>
}

export interface ExchangeRequest {
  readonly tokenUrl: string
  readonly subjectToken: string
  readonly zoneId: string
  readonly resource: string | ReadonlyArray<string>
  readonly scope?: string | ReadonlyArray<string> | undefined
  readonly ttlSeconds?: number | undefined
  readonly agentSessionId?: string | undefined
  readonly delegationEdgeId?: string | undefined
  readonly traceparent?: string | undefined
  readonly timeoutMs?: number | undefined
}

/**
 * Not retried: every answer is a new mandate and an audit record, and a lost answer
 * cannot be told apart from a refused request.
 */
export const exchange = async (r: ExchangeRequest): Promise<Mandate> => {
  const form = new URLSearchParams({
    grant_type: TOKEN_EXCHANGE,
    subject_token: r.subjectToken,
    subject_token_type: TOKEN_TYPE_JWT,
    zone_id: r.zoneId
  })
  for (const res of typeof r.resource === "string" ? [r.resource] : r.resource) form.append("resource", res)
  if (r.scope !== undefined) form.set("scope", typeof r.scope === "string" ? r.scope : r.scope.join(" "))
  if (r.ttlSeconds !== undefined) form.set("ttl_seconds", String(r.ttlSeconds))
  if (r.agentSessionId !== undefined) form.set("agent_session_id", r.agentSessionId)
  if (r.delegationEdgeId !== undefined) form.set("delegation_edge_id", r.delegationEdgeId)
  const { body } = await call<{ access_token: string; expires_in: number; scope: string; target_resources?: ReadonlyArray<string> }>({
    service: "sts",
    method: "POST",
    url: r.tokenUrl,
    form,
    headers: r.traceparent ? { traceparent: r.traceparent } : {},
    idempotent: false,
    timeoutMs: r.timeoutMs
  })
  return { accessToken: body.access_token, expiresIn: body.expires_in, scope: body.scope, resources: body.target_resources ?? [] }
}

/** The `iss` of a JWT, read without verifying it (the sts verifies; this only finds it). */
export const issuerOf = (jwt: string): string | undefined => {
  const part = jwt.split(".")[1]
  if (part === undefined) return undefined
  try {
    const claims = JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { iss?: unknown }
    return typeof claims.iss === "string" ? claims.iss : undefined
  } catch {
    return undefined
  }
}

/**
 * Where per-call mandates come from: the configured sts URL (CARACAL_STS_URL), else the
 * subject token's issuer — the sts signs with its ISSUER_URL, which is its own address in
 * every deployment that does not set one apart.
 */
export const tokenUrlFor = (stsUrl: string | undefined, subjectToken: string): string => {
  const base = stsUrl ?? issuerOf(subjectToken)
  if (base === undefined) throw new CaracalConfigError("stsUrl", "not set, and the subject token names no issuer (set CARACAL_STS_URL)")
  return `${base.replace(/\/+$/, "")}/oauth/2/token`
}

// The governed call: every request that is not /health, /ready or /metrics. In order:
//
//   1. which resource: `X-Caracal-Resource`, or else the first path segment (then the rest of
//      the path is what is appended to the resource's upstream prefix)
//   2. the mandate (`Authorization: Bearer`): the core verifier, per-call only, `aud` naming
//      the resource, issuer pinned, zone keys from the sts's JWKS
//   3. the resource in the mandate's zone, the caller's live binding to it, the zone and the
//      application live, a grant when the resource needs consent, and nothing the mandate
//      names revoked (its session, any edge of its delegation path, its grant, its credential)
//   4. one Redis round trip: the (zone, resource, application) budget, then the jti claimed
//   5. the credential to inject (released by the sts, cached while valid)
//   6. the decision recorded on the audit stream — a refusal too; a failed write is 503
//   7. the upstream call: resolved and checked against the SSRF guard, dialled at the checked
//      address, hop-by-hop and the caller's credentials stripped, streamed both ways, never
//      retried, never redirected; cut when a revocation names it mid-flight
//
// Plain Node code rather than an Effect route: it streams both ways and must be able to cut a
// response in flight, and it is the hot path (see the gateway benchmark).
import http from "node:http"
import { v7 as uuidv7 } from "uuid"
import https from "node:https"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import { ANY_ZONE, AuthError, type MandateVerifier, parseBearer, type Mandate } from "../../core/mandate/verify.ts"
import { requestIdOf } from "../../core/http/server.ts"
import { traceIdOf } from "../../core/http/trace-context.ts"
import { keepAliveAgent, keepAliveHttpsAgent } from "../../core/http/agents.ts"
import { InFlight } from "../../core/in-flight.ts"
import type { Directory } from "../api/directory.ts"
import { CredentialUnavailable, type CredentialCache, type Injected } from "./credentials.ts"
import type { Claim, ReplayGuard } from "./replay.ts"
import type { Revocations, RevokedKind } from "./revocations.ts"
import { type Allowlist, type CheckedTarget, checkUpstream, type Resolve, UpstreamNotAllowed } from "./upstream-guard.ts"

export type AuditDraft = Omit<AuditRecord, "id" | "occurred_at">
type Draft = { -readonly [K in keyof AuditDraft]: AuditDraft[K] }

const elapsed = (started: number) => Math.round((performance.now() - started) * 1000) / 1000

/** The draft as the record of an allowed call. */
const allowed = (draft: Draft, started: number) => {
  draft.decision = "allow"
  draft.reason = null
  draft.status = null
  draft.latency_ms = elapsed(started)
}

/** The record of the call as allowed, as stream fields (written with the jti claim when it is fresh). */
const allowedRecord = (draft: Draft, started: number, entry: (record: AuditRecord) => ReadonlyArray<string>) =>
  entry({ ...draft, id: uuidv7(), occurred_at: new Date().toISOString(), decision: "allow", reason: null, status: null, latency_ms: elapsed(started) })

export interface GatewayDeps {
  readonly directory: Directory
  readonly revocations: Revocations
  readonly verifier: MandateVerifier
  readonly replay: ReplayGuard
  readonly credentials: CredentialCache
  /** Appends to the audit stream; rejects when the stream does not take it. */
  readonly audit: (record: AuditDraft) => Promise<void>
  /**
   * When the audit stream is on the replay store's Redis: the record of an allowed call is
   * appended by the same script that claims its jti (one round trip instead of two). `entry`
   * gives a record's stream fields, `db` the stream's database.
   */
  readonly recordWithClaim?: { readonly stream: string; readonly db: number; readonly entry: (record: AuditRecord) => ReadonlyArray<string> }
  readonly budgetKey: (zoneId: string, resourceId: string, applicationId: string) => string
  readonly allowlist: Allowlist
  readonly resolve?: Resolve
  readonly maxBodyBytes: number
  readonly upstreamTimeoutMs: number
  readonly ratePerMinute: number
  readonly tls: boolean
  /** Counts by outcome, for /metrics. */
  readonly count: (decision: AuditRecord["decision"], reason: string) => void
  /** Why a dependency failed (a 503): for the log, never a token or a secret. */
  readonly warn: (message: string, fields: Readonly<Record<string, unknown>>) => void
}

/** A refusal: status, stable code, and the reason the audit record carries. */
class Refusal {
  readonly status: number
  readonly code: string
  readonly description: string
  readonly reason: string
  readonly decision: "deny" | "error"
  readonly headers: Readonly<Record<string, string>>
  /** Already on the audit stream (written with the jti claim). */
  recorded = false
  constructor(
    status: number,
    code: string,
    description: string,
    reason: string = code,
    decision: "deny" | "error" = "deny",
    headers: Readonly<Record<string, string>> = {}
  ) {
    this.status = status
    this.code = code
    this.description = description
    this.reason = reason
    this.decision = decision
    this.headers = headers
  }
}

const deny = (status: number, code: string, description: string, reason?: string) => new Refusal(status, code, description, reason)

// RFC 9110 §7.6.1 and the legacy proxy headers: they describe one connection, not the message
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])
// what the agent presented to the gateway must never reach an upstream
const CALLER_ONLY = new Set(["authorization", "cookie", "host", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"])

const connectionListed = (headers: http.IncomingHttpHeaders | http.OutgoingHttpHeaders): Set<string> => {
  const raw = headers.connection
  const value = Array.isArray(raw) ? raw.join(",") : typeof raw === "string" ? raw : ""
  return new Set(value.split(",").map((h) => h.trim().toLowerCase()).filter((h) => h !== ""))
}

/** The request headers for the upstream: end-to-end ones only, none of the caller's credentials. */
const upstreamHeaders = (req: http.IncomingMessage, upstreamHost: string, tls: boolean, injected: Injected | undefined) => {
  const listed = connectionListed(req.headers)
  const out: Record<string, string | Array<string>> = {}
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || CALLER_ONLY.has(name) || listed.has(name) || name.startsWith("x-caracal-")) continue
    out[name] = value
  }
  const forwardedFor = req.headers["x-forwarded-for"]
  const peer = req.socket.remoteAddress ?? ""
  out["x-forwarded-for"] = typeof forwardedFor === "string" && forwardedFor !== "" ? `${forwardedFor}, ${peer}` : peer
  out["x-forwarded-proto"] = tls ? "https" : "http"
  if (req.headers.host !== undefined) out["x-forwarded-host"] = req.headers.host
  out.host = upstreamHost
  if (injected !== undefined) out[injected.header] = injected.value
  return out
}

const responseHeaders = (res: http.IncomingMessage) => {
  const listed = connectionListed(res.headers)
  const out: Record<string, string | Array<string>> = {}
  for (const [name, value] of Object.entries(res.headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed.has(name)) continue
    out[name] = value
  }
  return out
}

const IDENTIFIER = /^[A-Za-z0-9._:@~-]{1,200}$/

/** The resource the request names, and the path (with query) to append to its upstream prefix. */
const targetOf = (req: http.IncomingMessage): { identifier: string; rest: string } | Refusal => {
  const url = req.url ?? "/"
  if (!url.startsWith("/")) return deny(400, "invalid_request", "the request target must be a path")
  const header = req.headers["x-caracal-resource"]
  if (typeof header === "string" && header !== "") {
    if (!IDENTIFIER.test(header)) return deny(400, "invalid_request", "X-Caracal-Resource is not a resource identifier")
    return { identifier: header, rest: url }
  }
  const q = url.indexOf("?")
  const path = q === -1 ? url : url.slice(0, q)
  const slash = path.indexOf("/", 1)
  const segment = slash === -1 ? path.slice(1) : path.slice(1, slash)
  let identifier: string
  try {
    identifier = decodeURIComponent(segment)
  } catch {
    return deny(400, "invalid_request", "the first path segment is not a resource identifier")
  }
  if (!IDENTIFIER.test(identifier)) return deny(400, "invalid_request", "name the resource with X-Caracal-Resource or the first path segment")
  return { identifier, rest: (slash === -1 ? "/" : path.slice(slash)) + (q === -1 ? "" : url.slice(q)) }
}

/** Joins the resource's upstream URL, its prefix and the request's remaining path. */
const upstreamUrlOf = (upstream: string, prefix: string, rest: string): URL => {
  const base = new URL(upstream)
  const basePath = base.pathname.replace(/\/$/, "")
  const q = rest.indexOf("?")
  const path = q === -1 ? rest : rest.slice(0, q)
  const joined = `${basePath}${prefix.replace(/\/$/, "")}${path === "/" && (basePath !== "" || prefix !== "") ? "" : path}`
  const url = new URL(base.origin)
  url.pathname = joined === "" ? "/" : joined
  url.search = q === -1 ? "" : rest.slice(q)
  return url
}

const send = (res: http.ServerResponse, requestId: string, r: Refusal) => {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = JSON.stringify({ error: r.code, error_description: r.description })
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(body)),
    "cache-control": "no-store",
    "x-request-id": requestId,
    ...r.headers
  }
  if (r.status === 401) headers["www-authenticate"] = `Bearer error="${r.code === "replay_detected" ? "invalid_token" : r.code}"`
  res.writeHead(r.status, headers)
  res.end(body)
}

/** Keep-alive pools to the upstreams; sockets are dialled at the checked address (see call). */
const agents = {
  http: keepAliveAgent({ maxSockets: 256, maxFreeSockets: 64, scheduling: "lifo" }),
  https: keepAliveHttpsAgent({ maxSockets: 256, maxFreeSockets: 64, scheduling: "lifo" })
}

interface Flight {
  readonly mandate: Mandate
  readonly zoneId: string
  readonly bindingId: string
  readonly grantId: string | undefined
  readonly credentialId: string | undefined
  readonly cut: () => void
}

const names = (f: Flight, kind: RevokedKind, id: string): boolean => {
  switch (kind) {
    case "session":
      return f.mandate.agentSessionId === id
    case "edge":
      return f.mandate.delegationEdgeId === id || delegationPathOf(f.mandate).includes(id)
    case "zone":
      return f.zoneId === id
    case "application":
      return f.mandate.clientId === id
    case "binding":
      return f.bindingId === id
    case "grant":
      return f.grantId === id
    case "credential":
      return f.credentialId === id
  }
}

/** The edges a delegated mandate was derived through (the sts's `delegation_path` claim). */
const delegationPathOf = (m: Mandate): ReadonlyArray<string> => m.delegationPath ?? []

export const makeProxy = (deps: GatewayDeps) => {
  const flights = new InFlight<Flight>()
  deps.revocations.onRevoked((kind, id) => {
    if (kind === "credential") deps.credentials.drop(id)
    for (const f of flights.snapshot()) if (names(f, kind, id)) f.cut()
  })

  /** Everything up to the upstream call: the decision, or a refusal. */
  const decide = async (req: http.IncomingMessage, draft: Draft, started: number) => {
    const target = targetOf(req)
    if (target instanceof Refusal) return target
    draft.resource = target.identifier
    const declared = req.headers["content-length"]
    if (declared !== undefined && Number(declared) > deps.maxBodyBytes) {
      return deny(413, "payload_too_large", `request body exceeds ${deps.maxBodyBytes} bytes`)
    }

    let token: string
    try {
      token = parseBearer(req.headers.authorization)
    } catch (e) {
      return e instanceof AuthError ? deny(e.status, e.code, e.description) : deny(401, "invalid_token", "malformed mandate")
    }
    // the zone is the one the mandate claims, once that zone's key verified it
    let mandate: Mandate
    try {
      mandate = await deps.verifier.verify(token, ANY_ZONE, { use: "per_call", resource: target.identifier })
    } catch (e) {
      if (e instanceof AuthError) {
        if (e.status >= 500) deps.warn("mandate keys unavailable", { reason: e.reason ?? e.description })
        return e.status >= 500
          ? new Refusal(503, e.code, e.description, "jwks_unavailable", "error")
          : deny(e.status === 403 ? 401 : e.status, e.status === 403 ? "invalid_token" : e.code, e.description, e.description.replace(/ /g, "_"))
      }
      return deny(401, "invalid_token", "mandate could not be verified")
    }
    draft.zone_id = mandate.zoneId
    draft.client_id = mandate.clientId
    draft.jti = mandate.jti
    draft.scope = [...mandate.scopes].join(" ")
    draft.agent_session_id = mandate.agentSessionId ?? null
    draft.delegation_edge_id = mandate.delegationEdgeId ?? null

    const d = deps.directory
    const resource = await d.resource(mandate.zoneId, target.identifier)
    if (resource === undefined || !resource.live) return deny(401, "invalid_token", "the mandate's zone has no such resource", "unknown_resource")
    const zone = await d.zone(mandate.zoneId)
    if (zone === undefined || !zone.live || deps.revocations.isRevoked("zone", mandate.zoneId)) {
      return deny(403, "forbidden", "the zone is archived", "zone_inactive")
    }
    const app = await d.application(mandate.zoneId, mandate.clientId)
    if (app === undefined || !app.live || deps.revocations.isRevoked("application", mandate.clientId)) {
      return deny(403, "forbidden", "the application is archived", "client_inactive")
    }
    const binding = await d.binding(mandate.zoneId, mandate.clientId, resource.id)
    if (binding === undefined || !binding.live || deps.revocations.isRevoked("binding", binding.id)) {
      return deny(403, "forbidden", "the application is not bound to this resource", "not_bound")
    }
    let grantId: string | undefined
    if (resource.record.requiresGrant) {
      const grant = await d.grant(mandate.zoneId, mandate.clientId, mandate.subject, resource.id)
      if (grant === undefined || !grant.live || deps.revocations.isRevoked("grant", grant.id)) {
        return deny(403, "forbidden", "the user's grant for this resource is revoked", "grant_revoked")
      }
      grantId = grant.id
    }
    if (deps.revocations.isRevoked("session", mandate.agentSessionId)) {
      return deny(403, "forbidden", "the agent session has ended", "session_revoked")
    }
    for (const edge of [mandate.delegationEdgeId, ...delegationPathOf(mandate)]) {
      if (deps.revocations.isRevoked("edge", edge)) return deny(403, "forbidden", "a delegation the mandate depends on is revoked", "delegation_revoked")
    }
    const credentialId = binding.record.credentialId ?? undefined
    if (credentialId !== undefined && deps.revocations.isRevoked("credential", credentialId)) {
      return deny(403, "forbidden", "the upstream credential is revoked", "credential_revoked")
    }
    if (resource.record.upstreamUrl === null) return deny(404, "no_upstream", "the resource has no upstream URL")
    const url = upstreamUrlOf(resource.record.upstreamUrl, resource.record.prefix, target.rest)
    let checked: CheckedTarget
    try {
      checked = await checkUpstream(url, deps.allowlist, deps.resolve)
    } catch (e) {
      if (e instanceof UpstreamNotAllowed) return deny(403, "upstream_not_allowed", "the upstream address is not allowed")
      throw e
    }

    // the credential before the jti is claimed: a call refused for want of it (the sts away)
    // leaves its single-use mandate unused, so the caller may try it again
    let injected: Injected | undefined
    if (credentialId !== undefined) {
      try {
        injected = await deps.credentials.get(credentialId, token)
      } catch (e) {
        if (e instanceof CredentialUnavailable && e.status < 500) return deny(403, "forbidden", "the upstream credential was not released", `credential_${e.reason}`)
        deps.warn("credential release failed", { credential_id: credentialId, error: e instanceof Error ? e.message : String(e) })
        return new Refusal(503, "temporarily_unavailable", "the upstream credential is unavailable", "credential_unavailable", "error")
      }
    }

    const budget = deps.budgetKey(mandate.zoneId, resource.id, mandate.clientId)
    let claim: Claim
    let recorded = false
    try {
      if (deps.recordWithClaim === undefined) claim = await deps.replay.claim(mandate.jti, mandate.expiresAt.getTime(), budget, deps.ratePerMinute)
      else {
        const r = deps.recordWithClaim
        const outcome = await deps.replay.claimAndRecord(mandate.jti, mandate.expiresAt.getTime(), budget, deps.ratePerMinute, {
          stream: r.stream,
          db: r.db,
          fields: allowedRecord(draft, started, r.entry)
        })
        claim = outcome.claim
        recorded = outcome.recorded
      }
    } catch (e) {
      deps.warn("replay check failed", { error: e instanceof Error ? e.message : String(e) })
      return new Refusal(503, "temporarily_unavailable", "the replay check is unavailable", "replay_store_unavailable", "error")
    }
    const refusal = claim === "replay"
      ? deny(401, "replay_detected", "this per-call mandate has already been used", "replay_detected")
      : claim === "rate_limited"
      ? new Refusal(429, "rate_limited", "too many requests for this resource", "rate_limited", "deny", { "retry-after": "60" })
      : undefined
    if (refusal !== undefined) {
      refusal.recorded = recorded
      return refusal
    }
    return { mandate, url, checked, injected, bindingId: binding.id, grantId, credentialId, recorded }
  }

  const handle = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const started = performance.now()
    const requestId = requestIdOf(req.headers["x-request-id"] as string | undefined)
    const draft: Draft = {
      zone_id: null,
      source: "gateway",
      kind: "proxy",
      decision: "deny",
      reason: null,
      request_id: requestId,
      trace_id: traceIdOf(req.headers.traceparent),
      client_id: null,
      agent_session_id: null,
      delegation_edge_id: null,
      resource: null,
      scope: null,
      jti: null,
      status: null,
      latency_ms: null
    }
    const refuse = async (r: Refusal) => {
      draft.decision = r.decision
      draft.reason = r.reason
      draft.status = r.status
      draft.latency_ms = elapsed(started)
      deps.count(r.decision, r.reason)
      try {
        if (!r.recorded) await deps.audit(draft)
      } catch (e) {
        deps.warn("audit append failed", { error: e instanceof Error ? e.message : String(e) })
        // the refusal stands either way; only its status says the record is missing
        return send(res, requestId, new Refusal(503, "temporarily_unavailable", "the audit stream is unavailable"))
      }
      req.resume()
      send(res, requestId, r)
    }

    decide(req, draft, started).then(async (decision) => {
      if (decision instanceof Refusal) return refuse(decision)
      if (!decision.recorded) {
        allowed(draft, started)
        try {
          await deps.audit(draft)
        } catch (e) {
          deps.warn("audit append failed", { error: e instanceof Error ? e.message : String(e) })
          deps.count("error", "audit_unavailable")
          req.resume()
          return send(res, requestId, new Refusal(503, "temporarily_unavailable", "the audit stream is unavailable"))
        }
      }
      deps.count("allow", "allowed")
      forward(req, res, requestId, decision)
    }).catch((e) => {
      // a bug, not a decision: the caller gets a 500 without details (never a stack trace)
      deps.warn("governed call failed", { error: e instanceof Error ? (e.stack ?? e.message) : String(e) })
      deps.count("error", "internal")
      req.resume()
      send(res, requestId, new Refusal(500, "server_error", "the gateway failed"))
    })
  }

  const forward = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    requestId: string,
    d: { mandate: Mandate; url: URL; checked: CheckedTarget; injected: Injected | undefined; bindingId: string; grantId: string | undefined; credentialId: string | undefined }
  ) => {
    const checked = d.checked
    const secure = d.url.protocol === "https:"
    const upstream = (secure ? https : http).request({
      protocol: d.url.protocol,
      hostname: d.url.hostname.replace(/^\[|\]$/g, ""),
      port: d.url.port === "" ? undefined : Number(d.url.port),
      path: d.url.pathname + d.url.search,
      method: req.method,
      headers: upstreamHeaders(req, d.url.host, deps.tls, d.injected),
      agent: secure ? agents.https : agents.http,
      // dial the address the guard checked, never a fresh resolution of the name
      lookup: ((_host: string, options: { all?: boolean }, cb: (...args: Array<unknown>) => void) =>
        options.all ? cb(null, [{ address: checked.address, family: checked.family }]) : cb(null, checked.address, checked.family)) as never,
      ...(secure ? { servername: d.url.hostname } : {})
    })
    let finished = false
    const flight: Flight = {
      mandate: d.mandate,
      zoneId: d.mandate.zoneId,
      bindingId: d.bindingId,
      grantId: d.grantId,
      credentialId: d.credentialId,
      cut: () => {
        // revoked mid-flight: no more bytes either way
        finished = true
        upstream.destroy()
        if (res.headersSent) res.destroy()
        else send(res, requestId, deny(403, "forbidden", "revoked while in flight", "revoked_in_flight"))
      }
    }
    const registered = flights.add(flight)
    const done = () => {
      finished = true
      clearTimeout(timer)
      registered.remove()
    }
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy()
      done()
    })
    const timer = setTimeout(() => {
      if (finished || res.headersSent) return
      upstream.destroy()
      send(res, requestId, new Refusal(504, "gateway_timeout", "the upstream did not answer in time"))
    }, deps.upstreamTimeoutMs)

    let received = 0
    req.on("data", (chunk: Buffer) => {
      received += chunk.length
      if (received > deps.maxBodyBytes) {
        upstream.destroy()
        req.unpipe(upstream)
        send(res, requestId, deny(413, "payload_too_large", `request body exceeds ${deps.maxBodyBytes} bytes`))
      }
    })
    req.pipe(upstream)
    upstream.on("response", (up) => {
      clearTimeout(timer)
      if (finished) return up.destroy()
      res.writeHead(up.statusCode ?? 502, { ...responseHeaders(up), "x-request-id": requestId })
      // SSE and chunked bodies pass as they come: no buffering, headers out at once. A sized
      // body's headers leave with its first bytes instead (one write, not two, per call)
      if (up.headers["content-length"] === undefined) res.flushHeaders()
      // pipe, not stream.pipeline: pipeline aborts an AbortController of its own at every
      // finish, and the DOMException that makes (a captured stack) cost more per call than
      // the piping. The caller's side closing destroys the upstream call (res "close" above).
      up.pipe(res)
      up.on("error", () => res.destroy())
      // an upstream message cut short must not be ended as if complete (a chunked body would be)
      up.on("close", () => {
        if (!up.complete) res.destroy()
      })
    })
    upstream.on("error", () => {
      if (finished) return
      clearTimeout(timer)
      send(res, requestId, new Refusal(502, "bad_gateway", "the upstream could not be reached"))
      done()
    })
  }

  return { handle, flights }
}

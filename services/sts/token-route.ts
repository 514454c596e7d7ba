// POST /oauth/2/token: the request parsed (token-request.ts), the exchange run
// (exchange.ts), its outcome appended to the audit stream — then, and only then, answered.
// A decision that cannot be recorded is not given: 503, and no token leaves.
//
// The endpoint is a plain Node handler that the kernel's server hands this one route (a Front,
// core/http/server.ts), like the gateway's proxy: a token exchange is the sts's hot path, and
// running it through the router's effects cost about as much CPU as the exchange's own work
// beside OPA. It keeps the kernel's rules: the request id, the body limit, the request
// metrics, no stack trace in an answer.
import type http from "node:http"
import { type AuditLogShape, completeRecord } from "../../core/audit-log.ts"
import { requestIdOf } from "../../core/http/server.ts"
import { traceIdOf } from "../../core/http/trace-context.ts"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import type { AuditFacts, ExchangeDeps, Issued } from "./exchange.ts"
import { makeExchange } from "./exchange.ts"
import { OAuthError, parseTokenRequest, TOKEN_BODY_MAX_BYTES, type TokenRequest } from "./token-request.ts"

export const TOKEN_PATH = "/oauth/2/token"

/** The policy engine could not decide (down, slow, broken): never an allow. */
export class PolicyUnavailableError extends Error {}

type Outcome =
  | { readonly issued: Issued }
  | { readonly error: OAuthError; readonly errored: boolean; readonly cause?: unknown }

const NO_STORE = { "cache-control": "no-store", pragma: "no-cache" }

/** What the endpoint needs besides the exchange: the audit stream, the log and the request metrics. */
export interface TokenEndpointDeps {
  readonly audit: AuditLogShape
  readonly logError: (message: string, fields: Record<string, unknown>) => void
  readonly observe: (method: string, status: number, seconds: number) => void
}

const oauthHeaders = (e: OAuthError, basic: boolean): Record<string, string> => {
  const headers: Record<string, string> = { ...NO_STORE }
  // RFC 6749 §5.2: a client that authenticated with Basic is challenged with Basic
  if (e.status === 401) headers["www-authenticate"] = basic ? `Basic realm="caracal", charset="UTF-8"` : `Bearer error="invalid_client"`
  if (e.status === 429) headers["retry-after"] = "60"
  return headers
}

const oauthBody = (e: OAuthError) => ({
  error: e.error,
  error_description: e.description,
  ...(e.reason === undefined ? {} : { reason: e.reason })
})

const respond = (res: http.ServerResponse, status: number, requestId: string, headers: Record<string, string>, body: unknown) => {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    ...headers,
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(text)),
    "x-request-id": requestId
  })
  res.end(text)
}

/** The body as text, or undefined past `limit` bytes. */
const readBody = (req: http.IncomingMessage, limit: number): Promise<string | undefined> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    req.on("data", (c: Buffer) => {
      size += c.length
      if (size <= limit) return void chunks.push(c)
      // answered at once; the connection closes after the answer, the rest is never read
      chunks.length = 0
      req.pause()
      resolve(undefined)
    })
    req.on("end", () => resolve(size > limit ? undefined : Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

/** The handler of POST /oauth/2/token. */
export const makeTokenEndpoint = (deps: ExchangeDeps, endpoint: TokenEndpointDeps) => {
  const { exchange } = makeExchange(deps)

  const run = async (req: http.IncomingMessage, res: http.ServerResponse, requestId: string): Promise<number> => {
    const started = performance.now()
    const facts: { -readonly [K in keyof AuditFacts]: AuditFacts[K] } = {
      zone_id: null,
      client_id: null,
      agent_session_id: null,
      delegation_edge_id: null,
      resource: null,
      scope: null,
      jti: null
    }
    let parsed: TokenRequest | undefined
    let outcome: Outcome
    try {
      // an announced oversize body is refused before a byte of it is kept
      const tooLarge = Number(req.headers["content-length"] ?? "0") > TOKEN_BODY_MAX_BYTES
      const text = tooLarge ? undefined : await readBody(req, TOKEN_BODY_MAX_BYTES)
      if (text === undefined) {
        res.shouldKeepAlive = false
        outcome = { error: new OAuthError(413, "invalid_request", "the request body is too large"), errored: false }
      } else {
        parsed = parseTokenRequest(text, req.headers["content-type"], req.headers.authorization)
        outcome = { issued: await exchange(parsed, requestId, facts) }
      }
    } catch (e) {
      if (e instanceof OAuthError) outcome = { error: e, errored: false }
      else if (e instanceof PolicyUnavailableError) {
        outcome = { error: new OAuthError(503, "temporarily_unavailable", "the policy engine cannot decide now"), errored: true }
      } else outcome = { error: new OAuthError(503, "temporarily_unavailable", "a dependency is unavailable"), errored: true, cause: e }
    }
    if ("error" in outcome && outcome.cause !== undefined) {
      endpoint.logError("token exchange failed", { request_id: requestId, cause: String(outcome.cause) })
    }
    const recordOf = (o: Outcome): Omit<AuditRecord, "id" | "occurred_at"> => ({
      zone_id: facts.zone_id,
      source: "sts",
      kind: parsed?.grantType === "client_credentials" ? "client_credentials" : "token_exchange",
      decision: "issued" in o ? "allow" : o.errored ? "error" : "deny",
      reason: "issued" in o ? null : o.error.reason ?? o.error.error,
      request_id: requestId,
      trace_id: traceIdOf(req.headers.traceparent),
      client_id: facts.client_id,
      agent_session_id: facts.agent_session_id,
      delegation_edge_id: facts.delegation_edge_id,
      resource: facts.resource,
      scope: facts.scope,
      jti: "issued" in o ? o.issued.jti : null,
      status: "issued" in o ? 200 : o.error.status,
      latency_ms: Math.round((performance.now() - started) * 100) / 100,
      decision_id: facts.decision_id ?? null
    })
    try {
      if ("issued" in outcome && outcome.issued.budgets.length > 0 && deps.takeAndRecord !== undefined) {
        // the issued mandate's budgets counted and its record written in one round trip; a spent
        // budget writes nothing there, and the refusal is recorded on its own
        const within = await deps.takeAndRecord("token", outcome.issued.budgets, deps.tokenRatePerMinute, completeRecord(recordOf(outcome)))
        if (!within) {
          outcome = { error: new OAuthError(429, "slow_down", "token rate limit reached for this resource; retry later"), errored: false }
          await endpoint.audit.appendNow(recordOf(outcome))
        }
      } else await endpoint.audit.appendNow(recordOf(outcome))
    } catch {
      endpoint.logError("audit record not written: refusing", { request_id: requestId })
      const e = new OAuthError(503, "temporarily_unavailable", "the decision could not be recorded")
      respond(res, 503, requestId, oauthHeaders(e, false), oauthBody(e))
      return 503
    }
    if ("issued" in outcome) {
      respond(res, 200, requestId, NO_STORE, outcome.issued.body)
      return 200
    }
    const basic = parsed?.basicAuth ?? /^Basic /i.test(req.headers.authorization ?? "")
    respond(res, outcome.error.status, requestId, oauthHeaders(outcome.error, basic), oauthBody(outcome.error))
    return outcome.error.status
  }

  return {
    /** Whether a request is this endpoint's (any other goes on to the router). */
    claims: (req: http.IncomingMessage) => req.method === "POST" && (req.url ?? "").split("?")[0] === TOKEN_PATH,
    handle: (req: http.IncomingMessage, res: http.ServerResponse) => {
      const started = performance.now()
      const requestId = requestIdOf(req.headers["x-request-id"] as string | undefined)
      run(req, res, requestId).then(
        (status) => endpoint.observe("POST", status, (performance.now() - started) / 1000),
        (e: unknown) => {
          // a bug, not a decision: a 500 without details (never a stack trace)
          endpoint.logError("token endpoint failed", { request_id: requestId, cause: e instanceof Error ? (e.stack ?? e.message) : String(e) })
          if (!res.headersSent) respond(res, 500, requestId, NO_STORE, { error: "server_error", error_description: "the token endpoint failed" })
          else res.destroy()
          endpoint.observe("POST", 500, (performance.now() - started) / 1000)
        }
      )
    }
  }
}

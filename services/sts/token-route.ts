// POST /oauth/2/token: the request parsed (token-request.ts), the exchange run
// (exchange.ts), its outcome appended to the audit stream — then, and only then, answered.
// A decision that cannot be recorded is not given: 503, and no token leaves.
import { Effect } from "effect"
import { HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import type { AuditLogShape } from "../../core/audit-log.ts"
import { RequestId } from "../../core/http/server.ts"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import type { AuditFacts, ExchangeDeps, Issued } from "./exchange.ts"
import { makeExchange } from "./exchange.ts"
import { OAuthError, parseTokenRequest, TOKEN_BODY_MAX_BYTES, type TokenRequest } from "./token-request.ts"

/** The policy engine could not decide (down, slow, broken): never an allow. */
export class PolicyUnavailableError extends Error {}

type Outcome =
  | { readonly issued: Issued }
  | { readonly error: OAuthError; readonly errored: boolean; readonly cause?: unknown }

const NO_STORE = { "cache-control": "no-store", pragma: "no-cache" }

const oauthResponse = (e: OAuthError, basic: boolean) => {
  const body = { error: e.error, error_description: e.description, ...(e.reason === undefined ? {} : { reason: e.reason }) }
  const headers: Record<string, string> = { ...NO_STORE }
  // RFC 6749 §5.2: a client that authenticated with Basic is challenged with Basic
  if (e.status === 401) headers["www-authenticate"] = basic ? `Basic realm="caracal", charset="UTF-8"` : `Bearer error="invalid_client"`
  if (e.status === 429) headers["retry-after"] = "60"
  return Res.jsonUnsafe(body, { status: e.status, headers })
}

const traceIdOf = (traceparent: string | undefined) => /^[\da-f]{2}-([\da-f]{32})-[\da-f]{16}-[\da-f]{2}$/.exec(traceparent ?? "")?.[1] ?? null

/** The handler of POST /oauth/2/token. */
export const tokenHandler = (deps: ExchangeDeps, audit: AuditLogShape) => {
  const { exchange } = makeExchange(deps)
  const handle = Effect.fn("sts.token")(function*() {
    const req = yield* Req.HttpServerRequest
    const requestId = yield* RequestId
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
    const tooLarge = Number(req.headers["content-length"] ?? "0") > TOKEN_BODY_MAX_BYTES
    // read within the request's limits (the kernel caps a body without a length while it is read)
    const read = tooLarge ? undefined : yield* Effect.exit(req.text)
    const outcome = yield* Effect.promise(async (): Promise<Outcome> => {
      try {
        if (read === undefined || read._tag === "Failure" || Buffer.byteLength(read.value) > TOKEN_BODY_MAX_BYTES) {
          return { error: new OAuthError(413, "invalid_request", "the request body is too large"), errored: false }
        }
        parsed = parseTokenRequest(read.value, req.headers["content-type"], req.headers.authorization)
        return { issued: await exchange(parsed, requestId, facts) }
      } catch (e) {
        if (e instanceof OAuthError) return { error: e, errored: false }
          if (e instanceof PolicyUnavailableError) {
          return { error: new OAuthError(503, "temporarily_unavailable", "the policy engine cannot decide now"), errored: true }
        }
        return { error: new OAuthError(503, "temporarily_unavailable", "a dependency is unavailable"), errored: true, cause: e }
      }
    })
    if ("error" in outcome && outcome.cause !== undefined) {
      yield* Effect.logError("token exchange failed").pipe(Effect.annotateLogs({ cause: String(outcome.cause) }))
    }
    const status = "issued" in outcome ? 200 : outcome.error.status
    const record: Omit<AuditRecord, "id" | "occurred_at"> = {
      zone_id: facts.zone_id,
      source: "sts",
      kind: parsed?.grantType === "client_credentials" ? "client_credentials" : "token_exchange",
      decision: "issued" in outcome ? "allow" : outcome.errored ? "error" : "deny",
      reason: "issued" in outcome ? null : outcome.error.reason ?? outcome.error.error,
      request_id: requestId,
      trace_id: traceIdOf(req.headers.traceparent),
      client_id: facts.client_id,
      agent_session_id: facts.agent_session_id,
      delegation_edge_id: facts.delegation_edge_id,
      resource: facts.resource,
      scope: facts.scope,
      jti: "issued" in outcome ? outcome.issued.jti : null,
      status,
      latency_ms: Math.round((performance.now() - started) * 100) / 100,
      decision_id: facts.decision_id ?? null
    }
    const recorded = yield* Effect.exit(audit.append(record))
    if (recorded._tag === "Failure") {
      yield* Effect.logError("audit record not written: refusing").pipe(Effect.annotateLogs({ request_id: requestId }))
      return oauthResponse(new OAuthError(503, "temporarily_unavailable", "the decision could not be recorded"), false)
    }
    if ("issued" in outcome) return Res.jsonUnsafe(outcome.issued.body, { status: 200, headers: NO_STORE })
    return oauthResponse(outcome.error, parsed?.basicAuth ?? /^Basic /i.test(req.headers.authorization ?? ""))
  })
  return handle()
}

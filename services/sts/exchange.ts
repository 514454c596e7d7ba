// The token exchange: who asks (a client secret, or a mandate of this sts), for what
// (ambient authority, or per-call authority over resources), through which session and
// delegation edge, narrowed at every step, decided by the zone's policy, signed with the
// zone's key and recorded in the audit stream before it is answered.
//
// Ambient (`use=ambient`, `aud` = the issuer): client_credentials, or a token exchange
// without subject_token; scope = requested ∩ the application's allowed_scopes.
// Per-call (`use=per_call`, `aud` = the granted resources): a token exchange whose
// subject_token is a mandate of this sts; an ambient subject of the same zone authenticates
// the client by itself. Scope ⊆ the resources' scopes (a scope is granted if a named resource
// offers it), ∩ the user's grant for resources that need consent, ∩ a per-call subject's
// scope, ∩ the delegation edge's scopes; a requested scope outside that is invalid_scope.
// A delegate presents the edge's target session (`agent_session_id`) and acts as the edge's
// receiver application; every edge above it must still be active and unexpired.
import { createLocalJWKSet, decodeProtectedHeader, type JWK, jwtVerify, type JWTPayload, SignJWT } from "jose"
import { type KeyObject, randomBytes } from "node:crypto"
import type { AuditRecord } from "../../schemas/audit-record.ts"
import { Lru } from "../../core/lru.ts"
import { verifySecret } from "../api/secrets.ts"
import type { CoordinatorView, EdgeFacts } from "./coordinator-view.ts"
import type { Directory } from "../api/directory.ts"
import {
  AMBIENT_TTL_MAX,
  DEFAULT_TTL,
  invalidRequest,
  OAuthError,
  PER_CALL_TTL_MAX,
  TOKEN_TYPE_JWT,
  type TokenRequest
} from "./token-request.ts"

export interface Decision {
  readonly allow: boolean
  readonly reason: string
  readonly decisionId: string
}

export interface SigningKey {
  readonly kid: string
  readonly privateKey: KeyObject | CryptoKey
}

export interface ExchangeDeps {
  readonly issuer: string
  readonly directory: Directory
  /** The zone's signing key (provisioned on demand for a zone the log knows); undefined: none. */
  readonly signingKey: (zoneId: string) => Promise<SigningKey | undefined>
  /** The zone's published public keys (subject and actor tokens verify against them). */
  readonly publishedKeys: (zoneId: string) => Promise<ReadonlyArray<JWK>>
  /** The zone's policy; throws when it cannot decide (the exchange is then a 503, never an allow). */
  readonly decide: (zoneId: string, input: unknown) => Promise<Decision>
  readonly coordinator: CoordinatorView
  /** Counts one use of a per-minute budget; false when it is spent (throws when the counter is unreachable: fail closed). */
  readonly take: (scope: string, id: string, perMinute: number) => Promise<boolean>
  /** Whether a per-minute budget is already spent, without counting. */
  readonly spent: (scope: string, id: string, perMinute: number) => Promise<boolean>
  readonly tokenRatePerMinute: number
  readonly clientFailuresPerMinute: number
  readonly now: () => Date
  /**
   * When set, an issued mandate's budgets are counted with its audit record in one script
   * (token-route.ts: one round trip for both): the exchange leaves them in `Issued.budgets`.
   * True when every budget was within the limit and the record written; false when one is
   * spent (nothing written). Throws when Redis cannot be asked (fail closed).
   */
  readonly takeAndRecord?: (scope: string, ids: ReadonlyArray<string>, perMinute: number, record: AuditRecord) => Promise<boolean>
}

export interface Issued {
  readonly body: {
    readonly access_token: string
    readonly token_type: "Bearer"
    readonly expires_in: number
    readonly scope: string
    readonly issued_token_type: string
    readonly target_resources: ReadonlyArray<string>
  }
  readonly jti: string
  /** The token budgets still to count with the record (ExchangeDeps.takeAndRecord); empty when counted. */
  readonly budgets: ReadonlyArray<string>
}

/** What the audit record of the exchange says besides its outcome (filled as the exchange learns it). */
export type AuditFacts = Pick<AuditRecord, "zone_id" | "client_id" | "agent_session_id" | "delegation_edge_id" | "resource" | "scope" | "jti"> & {
  decision_id?: string | null
  reason?: string | null
}

const CLOCK_TOLERANCE_S = 5
const denied = (reason: string, description = reason.replace(/_/g, " ")) => new OAuthError(403, "access_denied", description, reason)
const invalidClient = () => new OAuthError(401, "invalid_client", "client authentication failed")
const invalidScope = (description: string) => new OAuthError(400, "invalid_scope", description)

/** ≥ 128 random bits (a UUID has fewer): 18 bytes, 24 base64url characters. */
export const newJti = () => randomBytes(18).toString("base64url")

interface Subject {
  readonly payload: JWTPayload & Record<string, unknown>
  readonly zoneId: string
  readonly clientId: string
  readonly use: "ambient" | "per_call"
  readonly scopes: ReadonlyArray<string>
}

const scopesOf = (p: Record<string, unknown>) => (typeof p.scope === "string" ? p.scope.split(" ").filter((s) => s !== "") : [])

/** How long a zone's published keys are reused for verifying subject and actor tokens. */
const KEY_SET_MS = 1000
/** An unknown kid refetches the zone's keys, at most this often (a zone's first key signs at once). */
const KEY_REFETCH_MS = 100
/** Subject and actor tokens whose signature this replica has checked (an agent presents its ambient mandate at every exchange). */
const VERIFIED_KEPT = 10_000

interface Verified {
  readonly kid: string
  readonly payload: JWTPayload & Record<string, unknown>
}

export const makeExchange = (deps: ExchangeDeps) => {
  // the zone's published keys as jose key sets, reused for a second: each exchange verifies a
  // subject, and reading and importing the keys every time was a third of the exchange's work
  const keySets = new Map<string, { readonly at: number; readonly kids: ReadonlySet<string>; readonly set: ReturnType<typeof createLocalJWKSet> }>()
  const zoneKeySet = async (zoneId: string, kid: string) => {
    const now = Date.now()
    const cached = keySets.get(zoneId)
    const fresh = cached !== undefined && now - cached.at < KEY_SET_MS
    if (fresh && (cached.kids.has(kid) || now - cached.at < KEY_REFETCH_MS)) return cached
    const keys = await deps.publishedKeys(zoneId)
    const entry = { at: now, kids: new Set(keys.map((k) => k.kid ?? "")), set: createLocalJWKSet({ keys: [...keys] }) }
    if (keySets.size > 10_000) keySets.clear()
    keySets.set(zoneId, entry)
    return entry
  }
  // A token's signature, issuer and algorithm checked once are checked for good: the same
  // bytes verify the same way while their key is published. What changes with time (expiry,
  // not-before, the session's state) is checked at every use, below. The ES256 verification
  // was the largest single cost of an exchange.
  const verified = new Lru<string, Verified>(VERIFIED_KEPT)
  const stillInTime = (payload: JWTPayload, nowS: number) =>
    typeof payload.exp === "number" && nowS < payload.exp + CLOCK_TOLERANCE_S &&
    (typeof payload.nbf !== "number" || nowS >= payload.nbf - CLOCK_TOLERANCE_S)
  /** A mandate of this sts: signed by a published key of its zone, issued here, unexpired; else invalid_request (RFC 8693 §2.2.2). */
  const verifyOwnToken = async (token: string, what: string, expectedZone: string | undefined): Promise<Subject> => {
    let zoneId: string
    let kid: string
    try {
      const header = decodeProtectedHeader(token)
      if (header.alg !== "ES256" || typeof header.kid !== "string") throw new Error("alg")
      kid = header.kid
      const claims = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8")) as Record<string, unknown>
      if (typeof claims.zone_id !== "string" || !/^[A-Za-z0-9._:-]{1,128}$/.test(claims.zone_id)) throw new Error("zone")
      zoneId = claims.zone_id
    } catch {
      throw invalidRequest(`${what} is not a mandate of this issuer`)
    }
    if (expectedZone !== undefined && zoneId !== expectedZone) throw invalidRequest(`${what} belongs to another zone`)
    const keys = await zoneKeySet(zoneId, kid)
    let payload: JWTPayload & Record<string, unknown>
    const seen = verified.peek(token)
    if (seen !== undefined && seen.kid === kid && keys.kids.has(kid)) {
      if (!stillInTime(seen.payload, deps.now().getTime() / 1000)) {
        verified.delete(token)
        throw invalidRequest(`${what} is invalid or expired`)
      }
      payload = seen.payload
    } else {
      try {
        const checked = await jwtVerify(token, keys.set, {
          issuer: deps.issuer,
          algorithms: ["ES256"],
          clockTolerance: CLOCK_TOLERANCE_S,
          currentDate: deps.now()
        })
        payload = checked.payload as JWTPayload & Record<string, unknown>
      } catch {
        // expired, forged, unknown key, wrong issuer: one answer, the reason stays here
        throw invalidRequest(`${what} is invalid or expired`)
      }
      // only mandates with an expiry are kept (this sts sets one on all of them)
      if (typeof payload.exp === "number") verified.set(token, { kid, payload })
    }
    const use = payload.use
    if ((use !== "ambient" && use !== "per_call") || typeof payload.client_id !== "string") throw invalidRequest(`${what} is not a mandate`)
    if (typeof payload.iat === "number" && payload.iat > deps.now().getTime() / 1000 + CLOCK_TOLERANCE_S) {
      throw invalidRequest(`${what} was issued in the future`)
    }
    // a mandate of a session that has ended is void, whatever its exp says
    if (typeof payload.agent_session_id === "string") {
      const s = await deps.coordinator.session(zoneId, payload.agent_session_id)
      if (s === undefined || s.status === "terminated" || s.expiresAt.getTime() <= deps.now().getTime()) {
        throw invalidRequest(`${what} belongs to an agent session that has ended`)
      }
    }
    return { payload, zoneId, clientId: payload.client_id, use, scopes: scopesOf(payload) }
  }

  /** The application, authenticated by its secret (rate limited per application on failure). */
  const authenticateSecret = async (zoneId: string, applicationId: string | undefined, secret: string | undefined) => {
    if (applicationId === undefined || secret === undefined) throw invalidClient()
    const budget = `${zoneId}.${applicationId}`.replace(/[^A-Za-z0-9_.:-]/g, "_")
    // past the failure budget nothing is checked, right or wrong: a guesser learns nothing
    if (await deps.spent("client-auth", budget, deps.clientFailuresPerMinute)) {
      throw new OAuthError(429, "slow_down", "too many failed client authentications; retry later")
    }
    const app = await deps.directory.application(zoneId, applicationId)
    const ok = app !== undefined && app.live && verifySecret(app.record.secretVerifiers, secret, deps.now())
    if (!ok) {
      await deps.take("client-auth", budget, deps.clientFailuresPerMinute)
      throw invalidClient()
    }
    return app
  }

  const checkSession = async (zoneId: string, sessionId: string, clientId: string) => {
    const s = await deps.coordinator.session(zoneId, sessionId)
    if (s === undefined) throw denied("session_not_found")
    if (s.status === "terminated") throw denied("session_terminated")
    if (s.status === "suspended") throw denied("session_suspended")
    if (s.expiresAt.getTime() <= deps.now().getTime()) throw denied("session_expired")
    return s
  }

  /** The edge the caller exercises: active, unexpired, received by the caller into that session, its whole path alive. */
  const checkEdge = async (zoneId: string, edgeId: string, clientId: string, sessionId: string | undefined): Promise<ReadonlyArray<EdgeFacts>> => {
    const path = await deps.coordinator.path(zoneId, edgeId)
    if (path === undefined) throw denied("delegation_not_found")
    const edge = path[path.length - 1]!
    if (edge.receiverApplicationId !== clientId) throw denied("delegation_not_received", "the caller is not the delegation's receiver")
    if (sessionId !== undefined && edge.targetSessionId !== sessionId) {
      throw denied("delegation_session_mismatch", "agent_session_id must be the delegation's target session")
    }
    for (const hop of path) {
      if (hop.status !== "active") throw denied("delegation_revoked")
      if (hop.expiresAt.getTime() <= deps.now().getTime()) throw denied("delegation_expired")
    }
    return path
  }

  /**
   * Runs one exchange. `facts` is filled as it learns them, so that the caller can record a
   * refusal as precisely as a success.
   */
  const exchange = async (req: TokenRequest, requestId: string, facts: { -readonly [K in keyof AuditFacts]: AuditFacts[K] }): Promise<Issued> => {
    const subject = req.subjectToken === undefined ? undefined : await verifyOwnToken(req.subjectToken, "subject_token", req.zoneId)
    const actor = req.actorToken === undefined ? undefined : await verifyOwnToken(req.actorToken, "actor_token", subject?.zoneId ?? req.zoneId)
    const zoneId = subject?.zoneId ?? req.zoneId
    if (zoneId === undefined) throw invalidRequest("zone_id is required")

    // who: an ambient mandate of this zone authenticates its client; otherwise the secret does
    let clientId: string
    if (subject !== undefined && subject.use === "ambient" && req.clientSecret === undefined) {
      if (req.applicationId !== undefined && req.applicationId !== subject.clientId) throw invalidClient()
      clientId = subject.clientId
      const app = await deps.directory.application(zoneId, clientId)
      if (app === undefined || !app.live) throw invalidClient()
    } else {
      clientId = (await authenticateSecret(zoneId, req.applicationId ?? subject?.clientId, req.clientSecret)).id
      // a client exchanges its own mandates only: another's would lend it that mandate's subject
      // (a delegate acts through an edge with its own mandate, never with the issuer's)
      if (subject !== undefined && subject.clientId !== clientId) throw invalidRequest("subject_token was issued to another client")
    }
    facts.zone_id = zoneId
    facts.client_id = clientId
    const zone = await deps.directory.zone(zoneId)
    if (zone !== undefined && !zone.live) throw denied("zone_inactive")
    const app = (await deps.directory.application(zoneId, clientId))!

    const sessionId = req.agentSessionId ?? (typeof subject?.payload.agent_session_id === "string" ? subject.payload.agent_session_id : undefined)
    const edgeId = req.delegationEdgeId
    facts.agent_session_id = sessionId ?? null
    facts.delegation_edge_id = edgeId ?? null
    const path = edgeId === undefined ? undefined : await checkEdge(zoneId, edgeId, clientId, sessionId)
    const edge = path?.[path.length - 1]
    if (sessionId !== undefined) {
      const s = await checkSession(zoneId, sessionId, clientId)
      // a delegate acts in the edge's target session; anyone else only in its own sessions
      if (edge === undefined && s.applicationId !== clientId) throw denied("session_not_owned", "the agent session belongs to another application")
    }

    const perCall = subject !== undefined
    const now = deps.now()
    const ttl = req.ttlSeconds ?? DEFAULT_TTL
    const cap = perCall ? PER_CALL_TTL_MAX : AMBIENT_TTL_MAX
    if (ttl > cap) throw invalidRequest(`ttl_seconds may be at most ${cap} for a ${perCall ? "per-call" : "ambient"} mandate`)

    let audience: ReadonlyArray<string>
    let targets: ReadonlyArray<string>
    let granted: ReadonlyArray<string>
    const resourceFacts: Array<{ identifier: string; id: string; scopes: ReadonlyArray<string> }> = []
    if (!perCall) {
      if (req.resources.length > 0) throw new OAuthError(400, "invalid_target", "resources are granted by a token exchange with a subject_token")
      const allowed = app.record.allowedScopes
      granted = req.scopes === undefined ? allowed : req.scopes.filter((s) => allowed.includes(s))
      if (granted.length === 0) throw invalidScope("none of the requested scopes is allowed to this application")
      audience = [deps.issuer]
      targets = []
    } else {
      if (req.resources.length === 0) throw new OAuthError(400, "invalid_target", "a per-call mandate names its resource")
      facts.resource = req.resources.join(" ")
      let bound = new Set<string>()
      for (const identifier of req.resources) {
        const r = await deps.directory.resource(zoneId, identifier)
        if (r === undefined || !r.live) throw new OAuthError(400, "invalid_target", `unknown resource ${identifier}`)
        const binding = await deps.directory.binding(zoneId, clientId, r.id)
        if (binding === undefined || !binding.live) throw new OAuthError(400, "invalid_target", `the application is not bound to ${identifier}`)
        let offered: ReadonlyArray<string> = r.record.scopes
        if (r.record.requiresGrant) {
          const user = typeof subject!.payload.sub === "string" ? subject!.payload.sub : ""
          const g = await deps.directory.grant(zoneId, clientId, user, r.id)
          if (g === undefined || !g.live) throw denied("consent_required", `no grant for ${identifier}`)
          offered = offered.filter((s) => g.record.scopes.includes(s))
        }
        resourceFacts.push({ identifier, id: r.id, scopes: offered })
        bound = new Set([...bound, ...offered])
      }
      if (subject!.use === "per_call") bound = new Set([...bound].filter((s) => subject!.scopes.includes(s)))
      if (edge !== undefined) {
        bound = new Set([...bound].filter((s) => edge.scopes.includes(s)))
        const limited = edge.constraints.resources
        if (limited !== undefined && req.resources.some((r) => !limited.includes(r))) {
          throw new OAuthError(400, "invalid_target", "the delegation does not extend to this resource")
        }
      }
      if (req.scopes !== undefined) {
        const beyond = req.scopes.filter((s) => !bound.has(s))
        if (beyond.length > 0) throw invalidScope(`scope beyond what the resources, the subject and the delegation allow: ${beyond.join(" ")}`)
        granted = req.scopes
      } else {
        granted = [...bound]
      }
      if (granted.length === 0) throw invalidScope("no scope remains after narrowing")
      audience = req.resources
      targets = req.resources
    }
    facts.scope = granted.join(" ")

    // the budget is counted while the policy decides (two round trips at once), or, when the route
    // counts it with the issued record, after the decision; a spent one refuses, whatever the policy said
    const budgetIds = (targets.length > 0 ? targets : ["-"]).map((r) => `${zoneId}.${r}.${clientId}`.replace(/[^A-Za-z0-9_.:-]/g, "_"))
    const countAll = () => Promise.all(budgetIds.map((id) => deps.take("token", id, deps.tokenRatePerMinute)))
    const deferred = deps.takeAndRecord !== undefined
    const budgets = deferred ? undefined : countAll()
    budgets?.catch(() => undefined) // awaited below; a rejection before then is not unhandled
    const decided = deps.decide(zoneId, {
      zone_id: zoneId,
      principal: {
        application_id: clientId,
        client_id: clientId,
        user_id: typeof subject?.payload.sub === "string" ? subject.payload.sub : null,
        agent_session_id: sessionId ?? null,
        delegation_edge_id: edgeId ?? null,
        traits: app.record.traits
      },
      resource: resourceFacts.length === 0 ? null : resourceFacts[0],
      resources: resourceFacts,
      action: { use: perCall ? "per_call" : "ambient", scopes: granted },
      session: sessionId === undefined ? null : { id: sessionId },
      delegation: path === undefined ? null : { id: edgeId, path: path.map((e) => e.id), scopes: edge!.scopes, hop_count: path.length },
      context: { time: now.toISOString(), request_id: requestId, grant_type: req.grantType }
    })
    const [within, decision] = await Promise.all([budgets, decided])
    facts.decision_id = decision.decisionId
    // a refusal is counted here either way: only an issued mandate's count goes with its record
    const spent = (within ?? (decision.allow ? [] : await countAll())).some((ok) => !ok)
    if (spent) throw new OAuthError(429, "slow_down", "token rate limit reached for this resource; retry later")
    if (!decision.allow) throw denied(decision.reason || "policy_denied", `denied by policy: ${decision.reason || "no reason given"}`)

    const key = await deps.signingKey(zoneId)
    if (key === undefined) throw new OAuthError(503, "temporarily_unavailable", "the zone has no signing key yet")
    const jti = newJti()
    facts.jti = jti
    const iat = Math.floor(now.getTime() / 1000)
    const claims: Record<string, unknown> = {
      sub: typeof subject?.payload.sub === "string" ? subject.payload.sub : clientId,
      zone_id: zoneId,
      client_id: clientId,
      scope: granted.join(" "),
      sid: sessionId ?? jti,
      use: perCall ? "per_call" : "ambient",
      target: perCall ? targets : [deps.issuer],
      ...(sessionId === undefined ? {} : { agent_session_id: sessionId }),
      ...(path === undefined ? {} : { delegation_edge_id: edgeId, delegation_path: path.map((e) => e.id), hop_count: path.length }),
      ...(actor === undefined ? {} : {
        act: {
          sub: typeof actor.payload.sub === "string" ? actor.payload.sub : actor.clientId,
          client_id: actor.clientId,
          ...(typeof actor.payload.act === "object" && actor.payload.act !== null ? { act: actor.payload.act } : {})
        }
      })
    }
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: "ES256", kid: key.kid, typ: "JWT" })
      .setIssuer(deps.issuer)
      .setAudience(audience.length === 1 ? audience[0]! : [...audience])
      .setIssuedAt(iat)
      .setExpirationTime(iat + ttl)
      .setJti(jti)
      .sign(key.privateKey)
    return {
      jti,
      budgets: deferred ? budgetIds : [],
      body: {
        access_token: token,
        token_type: "Bearer",
        expires_in: ttl,
        scope: granted.join(" "),
        issued_token_type: TOKEN_TYPE_JWT,
        target_resources: targets
      }
    }
  }

  return { exchange, verifyOwnToken }
}

// The coordinator's HTTP surface (agent sessions and delegation edges) as plain methods.
// Every call presents an ambient mandate with agent:lifecycle; the Caracal client passes
// its subject token, the CLI CARACAL_COORDINATOR_TOKEN.
import { call, type RetryPolicy } from "./http.ts"

export type AgentKind = "instance" | "ephemeral" | "service"

export interface AgentSessionView {
  readonly id: string
  readonly zone_id: string
  readonly application_id: string
  readonly parent_id: string | null
  readonly root_id: string
  readonly depth: number
  readonly kind: AgentKind
  readonly status: string
  readonly ttl_seconds: number
  readonly metadata: unknown
  readonly created_at: string
  readonly expires_at: string
  readonly ended_at: string | null
  readonly end_reason: string | null
}

export interface DelegationView {
  readonly id: string
  readonly zone_id: string
  readonly issuer_application_id: string
  readonly receiver_application_id: string
  readonly source_session_id: string
  readonly target_session_id: string
  readonly scopes: ReadonlyArray<string>
  readonly constraints: { resources?: ReadonlyArray<string>; actions?: ReadonlyArray<string>; max_hops?: number; expires_at?: string }
  readonly parent_edge_id: string | null
  readonly status: string
  readonly created_at: string
  readonly expires_at: string
  readonly revoked_at: string | null
  readonly revoke_reason: string | null
}

export interface SpawnRequest {
  readonly application_id: string
  readonly parent_id?: string | undefined
  readonly kind?: AgentKind | undefined
  readonly ttl_seconds?: number | undefined
  readonly metadata?: Record<string, unknown> | undefined
}

export interface DelegateRequest {
  readonly issuer_application_id: string
  readonly source_session_id: string
  readonly target_session_id: string
  readonly receiver_application_id: string
  readonly scopes: ReadonlyArray<string>
  readonly constraints?: { resources?: ReadonlyArray<string>; actions?: ReadonlyArray<string>; max_hops?: number; expires_at?: string } | undefined
  readonly ttl_seconds?: number | undefined
}

export interface Page<T> {
  readonly items: ReadonlyArray<T>
  readonly next_cursor: string | null
}

export interface CoordinatorClientOptions {
  /** e.g. http://localhost:4000 */
  readonly baseUrl: string
  /** Default mandate for every call (a call's own `token` wins). */
  readonly token?: string | undefined
  readonly retry?: RetryPolicy | undefined
  /** Per attempt (default 10 s). */
  readonly timeoutMs?: number | undefined
}

export interface Auth {
  readonly token?: string | undefined
  readonly traceparent?: string | undefined
}

const enc = encodeURIComponent

export class CoordinatorClient {
  readonly baseUrl: string
  readonly #options: CoordinatorClientOptions

  constructor(options: CoordinatorClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "")
    this.#options = options
  }

  #send<T>(method: string, path: string, auth: Auth | undefined, o: { json?: unknown; idempotent: boolean; headers?: Record<string, string> }) {
    const token = auth?.token ?? this.#options.token
    const headers: Record<string, string> = { ...o.headers }
    if (token !== undefined) headers.authorization = `Bearer ${token}`
    if (auth?.traceparent !== undefined) headers.traceparent = auth.traceparent
    return call<T>({
      service: "coordinator",
      method,
      url: `${this.baseUrl}${path}`,
      headers,
      json: o.json,
      idempotent: o.idempotent,
      retry: this.#options.retry,
      timeoutMs: this.#options.timeoutMs
    }).then((r) => r.body)
  }

  /**
   * Spawns a session. `idempotencyKey` stands for this one logical spawn: it is sent with
   * every retry, so a spawn whose answer was lost is not made twice.
   */
  spawn(zoneId: string, body: SpawnRequest, opts: Auth & { idempotencyKey?: string } = {}) {
    const key = opts.idempotencyKey ?? globalThis.crypto.randomUUID()
    return this.#send<AgentSessionView>("POST", `/zones/${enc(zoneId)}/agents`, opts, { json: body, idempotent: true, headers: { "idempotency-key": key } })
  }

  get(zoneId: string, id: string, auth?: Auth) {
    return this.#send<AgentSessionView>("GET", `/zones/${enc(zoneId)}/agents/${enc(id)}`, auth, { idempotent: true })
  }

  list(zoneId: string, q: { applicationId?: string; status?: string; limit?: number; cursor?: string } = {}, auth?: Auth) {
    const p = new URLSearchParams()
    if (q.applicationId) p.set("application_id", q.applicationId)
    if (q.status) p.set("status", q.status)
    if (q.limit !== undefined) p.set("limit", String(q.limit))
    if (q.cursor) p.set("cursor", q.cursor)
    const qs = p.size > 0 ? `?${p}` : ""
    return this.#send<Page<AgentSessionView>>("GET", `/zones/${enc(zoneId)}/agents${qs}`, auth, { idempotent: true })
  }

  children(zoneId: string, id: string, auth?: Auth) {
    return this.#send<{ items: ReadonlyArray<AgentSessionView> }>("GET", `/zones/${enc(zoneId)}/agents/${enc(id)}/children`, auth, { idempotent: true })
      .then((r) => r.items)
  }

  /** The subtree under a session, itself included, depth first. */
  tree(zoneId: string, id: string, auth?: Auth) {
    return this.#send<{ items: ReadonlyArray<AgentSessionView> }>("GET", `/zones/${enc(zoneId)}/agents/${enc(id)}/tree`, auth, { idempotent: true })
      .then((r) => r.items)
  }

  // suspend and resume carry no idempotency key, so they are sent once
  suspend(zoneId: string, id: string, auth?: Auth) {
    return this.#send<AgentSessionView>("POST", `/zones/${enc(zoneId)}/agents/${enc(id)}/suspend`, auth, { idempotent: false })
  }

  resume(zoneId: string, id: string, auth?: Auth) {
    return this.#send<AgentSessionView>("POST", `/zones/${enc(zoneId)}/agents/${enc(id)}/resume`, auth, { idempotent: false })
  }

  /** Ends the session and its subtree; terminating an ended session is a no-op, so it is retried. */
  terminate(zoneId: string, id: string, reason?: string, auth?: Auth) {
    const qs = reason ? `?reason=${enc(reason)}` : ""
    return this.#send<AgentSessionView>("DELETE", `/zones/${enc(zoneId)}/agents/${enc(id)}${qs}`, auth, { idempotent: true })
  }

  delegationsOf(zoneId: string, sessionId: string, auth?: Auth) {
    return this.#send<{ inbound: ReadonlyArray<DelegationView>; outbound: ReadonlyArray<DelegationView> }>(
      "GET", `/zones/${enc(zoneId)}/agents/${enc(sessionId)}/delegations`, auth, { idempotent: true })
  }

  delegate(zoneId: string, body: DelegateRequest, opts: Auth & { idempotencyKey?: string } = {}) {
    const key = opts.idempotencyKey ?? globalThis.crypto.randomUUID()
    return this.#send<DelegationView>("POST", `/zones/${enc(zoneId)}/delegations`, opts, { json: body, idempotent: true, headers: { "idempotency-key": key } })
  }

  getDelegation(zoneId: string, id: string, auth?: Auth) {
    return this.#send<DelegationView>("GET", `/zones/${enc(zoneId)}/delegations/${enc(id)}`, auth, { idempotent: true })
  }

  /** The edge and every edge downstream of it. */
  traverse(zoneId: string, id: string, auth?: Auth) {
    return this.#send<{ items: ReadonlyArray<DelegationView> }>("GET", `/zones/${enc(zoneId)}/delegations/${enc(id)}/traverse`, auth, { idempotent: true })
      .then((r) => r.items)
  }

  /** Revokes the edge and everything downstream; revoking a revoked edge changes nothing, so it is retried. */
  revokeDelegation(zoneId: string, id: string, reason?: string, auth?: Auth) {
    return this.#send<DelegationView>("POST", `/zones/${enc(zoneId)}/delegations/${enc(id)}/revoke`, auth, {
      json: reason ? { reason } : {},
      idempotent: true
    })
  }
}

// The Caracal client: agent sessions at the coordinator, per-call mandates at the sts,
// and a fetch that sends calls to governed upstreams through the gateway. The current
// agent flows through async calls in an AsyncLocalStorage, so code deep inside an agent's
// work calls `caracal.fetch` without passing the session around.
import { AsyncLocalStorage } from "node:async_hooks"
import { type AgentKind, type AgentSessionView, CoordinatorClient, type DelegationView } from "./coordinator.ts"
import { CaracalConfigError, CaracalError } from "./errors.ts"
import { makeRouter, newTraceId, type ResourceBinding, traceIdOf, traceparentFor, withBaggage } from "./routing.ts"
import { exchange, type Mandate, tokenUrlFor } from "./token.ts"

export interface CaracalConfig {
  readonly coordinator: CoordinatorClient
  readonly zoneId: string
  readonly applicationId: string
  /** The application's ambient mandate (from the sts): it authenticates coordinator calls and per-call exchanges. */
  readonly subjectToken: string
  readonly gatewayUrl?: string | undefined
  readonly resources?: ReadonlyArray<ResourceBinding> | undefined
  readonly defaultKind?: AgentKind | undefined
  readonly defaultTtlSeconds?: number | undefined
  /** Beyond the seed (CARACAL_STS_URL): where per-call mandates come from; default the subject token's issuer. */
  readonly stsUrl?: string | undefined
}

export interface SpawnOptions {
  readonly kind?: AgentKind
  readonly ttlSeconds?: number
  readonly metadata?: Record<string, unknown>
  /** The parent session: by default the current agent (a child), or none (a root). `null` forces a root. */
  readonly parent?: Agent | string | null
  /** Leave the session running after the function returns (default: end it). */
  readonly keepAlive?: boolean
  /** Continue this trace (an incoming request's traceparent); by default the parent's, or a new one. */
  readonly traceparent?: string
}

export interface DelegateOptions {
  /** The target session (the agent that will exercise the edge). */
  readonly to: Agent | string
  readonly scopes: ReadonlyArray<string> | string
  /** The receiving application (default: this one). Another application must consent, or the caller hold delegation:grant. */
  readonly receiverApplicationId?: string
  readonly resources?: ReadonlyArray<string>
  readonly actions?: ReadonlyArray<string>
  readonly maxHops?: number
  /** Every edge expires: ttlSeconds or expiresAt (default: the client's defaultTtlSeconds, else 3600). */
  readonly ttlSeconds?: number
  readonly expiresAt?: string
}

export interface ExchangeOptions {
  readonly scope?: string | ReadonlyArray<string>
  readonly ttlSeconds?: number
  /** Exchange as this agent instead of the current one. */
  readonly agent?: Agent
}

export interface GovernedFetchOptions extends ExchangeOptions {
  /** Use this per-call mandate instead of exchanging for one. */
  readonly mandate?: string
}

const KINDS: ReadonlySet<string> = new Set(["instance", "ephemeral", "service"])

/** One agent session, as this process acts in it. */
export class Agent {
  readonly id: string
  readonly applicationId: string
  readonly kind: AgentKind
  readonly parentId: string | null
  readonly depth: number
  readonly expiresAt: string
  /** Set when this agent acts through a delegation edge it received. */
  readonly delegationEdgeId: string | undefined
  readonly traceId: string
  readonly #client: Caracal

  constructor(client: Caracal, view: AgentSessionView, traceId: string, delegationEdgeId?: string) {
    this.#client = client
    this.id = view.id
    this.applicationId = view.application_id
    this.kind = view.kind
    this.parentId = view.parent_id
    this.depth = view.depth
    this.expiresAt = view.expires_at
    this.traceId = traceId
    this.delegationEdgeId = delegationEdgeId
  }

  /** Runs `fn` with this agent as the current one. */
  run<T>(fn: (agent: Agent) => T): T {
    return this.#client.runAs(this, fn)
  }

  /** Spawns a child of this agent, runs `fn` inside it, then ends it (unless keepAlive). */
  spawn<T>(fn: (child: Agent) => T | Promise<T>, opts: Omit<SpawnOptions, "parent"> = {}): Promise<T> {
    return this.#client.spawn(fn, { ...opts, parent: this })
  }

  delegate(opts: DelegateOptions): Promise<DelegationView> {
    return this.#client.delegate(opts, this)
  }

  exchange(resource: string | ReadonlyArray<string>, opts: Omit<ExchangeOptions, "agent"> = {}): Promise<Mandate> {
    return this.#client.exchange(resource, { ...opts, agent: this })
  }

  fetch(input: string | URL | Request, init?: RequestInit, opts: Omit<GovernedFetchOptions, "agent"> = {}): Promise<Response> {
    return this.#client.fetch(input, init, { ...opts, agent: this })
  }

  /** The session as the coordinator has it now (status, expiry…). */
  refresh(): Promise<AgentSessionView> {
    return this.#client.coordinator.get(this.#client.zoneId, this.id, { token: this.#client.subjectToken })
  }

  /** Ends the session and its subtree (idempotent). */
  end(reason = "completed"): Promise<AgentSessionView> {
    return this.#client.coordinator.terminate(this.#client.zoneId, this.id, reason, { token: this.#client.subjectToken, traceparent: traceparentFor(this.traceId) })
  }
}

export class Caracal {
  readonly coordinator: CoordinatorClient
  readonly zoneId: string
  readonly applicationId: string
  readonly subjectToken: string
  readonly gatewayUrl: string | undefined
  readonly resources: ReadonlyArray<ResourceBinding>
  readonly defaultKind: AgentKind
  readonly defaultTtlSeconds: number | undefined
  readonly #tokenUrl: string
  readonly #route: ReturnType<typeof makeRouter>
  readonly #context = new AsyncLocalStorage<Agent>()

  constructor(config: CaracalConfig) {
    const required = (name: keyof CaracalConfig) => {
      const v = config[name]
      if (typeof v !== "string" || v.trim() === "") throw new CaracalConfigError(name, "is required")
      return v
    }
    if (!(config.coordinator instanceof CoordinatorClient)) throw new CaracalConfigError("coordinator", "must be a CoordinatorClient")
    this.coordinator = config.coordinator
    this.zoneId = required("zoneId")
    this.applicationId = required("applicationId")
    this.subjectToken = required("subjectToken")
    if (config.defaultKind !== undefined && !KINDS.has(config.defaultKind)) {
      throw new CaracalConfigError("defaultKind", "must be 'instance', 'ephemeral' or 'service'")
    }
    this.defaultKind = config.defaultKind ?? "instance"
    if (config.defaultTtlSeconds !== undefined && !(Number.isInteger(config.defaultTtlSeconds) && config.defaultTtlSeconds > 0)) {
      throw new CaracalConfigError("defaultTtlSeconds", "must be a positive integer")
    }
    this.defaultTtlSeconds = config.defaultTtlSeconds
    this.gatewayUrl = config.gatewayUrl?.replace(/\/+$/, "")
    this.resources = config.resources ?? []
    for (const [i, r] of this.resources.entries()) {
      if (!r.resourceId || !r.upstreamPrefix) throw new CaracalConfigError(`resources[${i}]`, "needs resourceId and upstreamPrefix")
    }
    if (this.resources.length > 0 && this.gatewayUrl === undefined) throw new CaracalConfigError("gatewayUrl", "is required when resources are given")
    this.#tokenUrl = tokenUrlFor(config.stsUrl, this.subjectToken)
    this.#route = makeRouter(this.resources)
  }

  /**
   * From CARACAL_COORDINATOR_URL (default http://localhost:4000), CARACAL_ZONE_ID,
   * CARACAL_APPLICATION_ID, CARACAL_SUBJECT_TOKEN, CARACAL_GATEWAY_URL, CARACAL_STS_URL
   * and CARACAL_RESOURCES (`id=prefix,id2=prefix2`).
   */
  static fromEnv(env: Record<string, string | undefined> = globalThis.process?.env ?? {}): Caracal {
    const need = (name: string) => {
      const v = env[name]
      if (v === undefined || v.trim() === "") throw new CaracalConfigError(name, "is required")
      return v.trim()
    }
    const opt = (name: string) => (env[name]?.trim() ? env[name]!.trim() : undefined)
    return new Caracal({
      coordinator: new CoordinatorClient({ baseUrl: opt("CARACAL_COORDINATOR_URL") ?? "http://localhost:4000" }),
      zoneId: need("CARACAL_ZONE_ID"),
      applicationId: need("CARACAL_APPLICATION_ID"),
      subjectToken: need("CARACAL_SUBJECT_TOKEN"),
      gatewayUrl: opt("CARACAL_GATEWAY_URL"),
      stsUrl: opt("CARACAL_STS_URL"),
      resources: parseResources(opt("CARACAL_RESOURCES"))
    })
  }

  /** The agent whose work is running, if any. */
  current(): Agent | undefined {
    return this.#context.getStore()
  }

  runAs<T>(agent: Agent, fn: (agent: Agent) => T): T {
    return this.#context.run(agent, () => fn(agent))
  }

  /**
   * Spawns a session (a child of the current agent unless `parent` says otherwise) and
   * returns it without running anything: the caller ends it.
   */
  async startSession(opts: Omit<SpawnOptions, "keepAlive"> = {}): Promise<Agent> {
    const parent = opts.parent === undefined ? this.current() : opts.parent ?? undefined
    const parentId = typeof parent === "string" ? parent : parent?.id
    const traceId = traceIdOf(opts.traceparent) ?? (typeof parent === "object" ? parent.traceId : undefined) ?? newTraceId()
    // one key per logical spawn: the client resends it with every retry
    const view = await this.coordinator.spawn(this.zoneId, {
      application_id: this.applicationId,
      parent_id: parentId,
      kind: opts.kind ?? this.defaultKind,
      ttl_seconds: opts.ttlSeconds ?? this.defaultTtlSeconds,
      metadata: opts.metadata
    }, { token: this.subjectToken, idempotencyKey: globalThis.crypto.randomUUID(), traceparent: traceparentFor(traceId) })
    return new Agent(this, view, traceId)
  }

  /**
   * Spawns a session, runs `fn` as that agent, and ends the session when `fn` settles
   * (reason `completed`, or `failed` when it threw) unless `keepAlive`.
   */
  async spawn<T>(fn: (agent: Agent) => T | Promise<T>, opts: SpawnOptions = {}): Promise<T> {
    const agent = await this.startSession(opts)
    let result: T
    try {
      result = await this.runAs(agent, fn)
    } catch (e) {
      // the work's error is what the caller needs; a failed end would hide it
      if (!opts.keepAlive) await agent.end("failed").catch(() => undefined)
      throw e
    }
    if (!opts.keepAlive) await agent.end("completed")
    return result
  }

  /** Spawns a child of the current agent; outside an agent this is an error. */
  async spawnChild<T>(fn: (child: Agent) => T | Promise<T>, opts: Omit<SpawnOptions, "parent"> = {}): Promise<T> {
    const parent = this.#requireAgent("spawnChild")
    return this.spawn(fn, { ...opts, parent })
  }

  /** Delegates from the current agent (or `from`) to another session, narrowing authority. */
  async delegate(opts: DelegateOptions, from?: Agent): Promise<DelegationView> {
    const source = from ?? this.#requireAgent("delegate")
    const ttl = opts.ttlSeconds ?? (opts.expiresAt === undefined ? this.defaultTtlSeconds ?? 3600 : undefined)
    const constraints = {
      ...(opts.resources ? { resources: opts.resources } : {}),
      ...(opts.actions ? { actions: opts.actions } : {}),
      ...(opts.maxHops === undefined ? {} : { max_hops: opts.maxHops }),
      ...(opts.expiresAt ? { expires_at: opts.expiresAt } : {})
    }
    return this.coordinator.delegate(this.zoneId, {
      issuer_application_id: source.applicationId,
      source_session_id: source.id,
      target_session_id: typeof opts.to === "string" ? opts.to : opts.to.id,
      receiver_application_id: opts.receiverApplicationId ?? this.applicationId,
      scopes: typeof opts.scopes === "string" ? opts.scopes.split(" ").filter(Boolean) : opts.scopes,
      constraints: Object.keys(constraints).length > 0 ? constraints : undefined,
      ttl_seconds: ttl
    }, { token: this.subjectToken, idempotencyKey: globalThis.crypto.randomUUID(), traceparent: traceparentFor(source.traceId) })
  }

  /**
   * Runs `fn` as the target session of a delegation this application received: its
   * exchanges carry the edge, so they get at most the edge's authority.
   */
  async asDelegate<T>(delegation: DelegationView | { id: string; target_session_id: string }, fn: (agent: Agent) => T | Promise<T>): Promise<T> {
    const view = await this.coordinator.get(this.zoneId, delegation.target_session_id, { token: this.subjectToken })
    const agent = new Agent(this, view, this.current()?.traceId ?? newTraceId(), delegation.id)
    return this.runAs(agent, fn)
  }

  /** A per-call mandate for `resource`, as the current agent (or `opts.agent`, or the application alone). */
  exchange(resource: string | ReadonlyArray<string>, opts: ExchangeOptions & { traceparent?: string } = {}): Promise<Mandate> {
    const agent = opts.agent ?? this.current()
    return exchange({
      tokenUrl: this.#tokenUrl,
      subjectToken: this.subjectToken,
      zoneId: this.zoneId,
      resource,
      scope: opts.scope,
      ttlSeconds: opts.ttlSeconds,
      agentSessionId: agent?.id,
      delegationEdgeId: agent?.delegationEdgeId,
      traceparent: opts.traceparent ?? traceparentFor(agent?.traceId ?? newTraceId())
    })
  }

  /**
   * fetch, governed: a URL under a resource's upstreamPrefix (longest first) goes to
   * `gatewayUrl/<rest>` with X-Caracal-Resource, a fresh per-call mandate (the gateway
   * refuses a replayed one) and traceparent/baggage; any other URL is fetched untouched.
   * An arrow, so it can be handed to libraries that take a fetch function.
   */
  readonly fetch = async (input: string | URL | Request, init?: RequestInit, opts: GovernedFetchOptions = {}): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
    const route = this.#route(url)
    if (route === undefined) return fetch(input, init)
    const agent = opts.agent ?? this.current()
    const headers = new Headers(input instanceof Request ? input.headers : undefined)
    if (init?.headers !== undefined) new Headers(init.headers).forEach((v, k) => headers.set(k, v))
    // an incoming trace (the caller's traceparent) is continued; otherwise the agent's trace
    const traceId = traceIdOf(headers.get("traceparent")) ?? agent?.traceId ?? newTraceId()
    if (!headers.has("traceparent")) headers.set("traceparent", traceparentFor(traceId))
    const baggage = withBaggage(headers.get("baggage"), agent ? { "caracal.agent_session_id": agent.id } : {})
    if (baggage !== "") headers.set("baggage", baggage)
    const mandate = opts.mandate ??
      (await this.exchange(route.resourceId, { ...opts, agent, traceparent: traceparentFor(traceId) })).accessToken
    headers.set("authorization", `Bearer ${mandate}`)
    headers.set("x-caracal-resource", route.resourceId)
    const target = `${this.gatewayUrl}/${route.rest}`
    if (!(input instanceof Request)) return fetch(target, { ...init, headers })
    // a Request's body is a stream: it moves to the new request (duplex half, as Node requires)
    return fetch(target, {
      method: input.method,
      body: input.body,
      signal: input.signal,
      redirect: input.redirect,
      ...(input.body ? { duplex: "half" } : {}),
      ...init,
      headers
    } as RequestInit)
  }

  #requireAgent(what: string): Agent {
    const agent = this.current()
    if (agent === undefined) {
      throw new CaracalError({ service: "config", status: 0, code: "no_current_agent", description: `${what} needs a current agent (call it inside caracal.spawn)` })
    }
    return agent
  }
}

/** `id=prefix,id2=prefix2`: split at the first "=", so a prefix may contain "=" (but no ","). */
export const parseResources = (raw: string | undefined): Array<ResourceBinding> => {
  if (raw === undefined) return []
  return raw.split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
    const i = entry.indexOf("=")
    if (i <= 0 || i === entry.length - 1) throw new CaracalConfigError("CARACAL_RESOURCES", `"${entry}" is not resourceId=upstreamPrefix`)
    return { resourceId: entry.slice(0, i).trim(), upstreamPrefix: entry.slice(i + 1).trim() }
  })
}

// The delegation edge aggregate: CreateDelegation, RevokeDelegation, ExpireDelegation →
// DelegationCreated, DelegationRevoked.
//
// An edge hands part of a session's authority to another session. Authority only narrows
// along a path: an edge out of a session that itself holds an inbound edge may carry only
// scopes, resources and actions that edge carries, fewer hops, and no later expiry. Every
// edge expires, never after either endpoint session. Cycles are refused.
import { Data, Effect } from "effect"
import type { Aggregate, CommandMeta } from "../../../core/command.ts"

export interface EndpointFacts {
  readonly id: string
  readonly applicationId: string
  readonly status: "active" | "suspended" | "terminated"
  readonly expiresAt: string
}

export interface Constraints {
  readonly resources?: ReadonlyArray<string> | undefined
  readonly actions?: ReadonlyArray<string> | undefined
  /** How many further re-delegations the receiver may make (0: none). */
  readonly maxHops?: number | undefined
  readonly expiresAt?: string | undefined
}

/** The active edge into the source session, whose authority the new edge narrows. */
export interface InboundFacts {
  readonly id: string
  readonly scopes: ReadonlyArray<string>
  readonly constraints: Constraints
  readonly expiresAt: string
}

export type DelegationCommand =
  | {
    readonly _tag: "CreateDelegation"
    readonly issuerApplicationId: string
    readonly receiverApplicationId: string
    /** null: the id names no session in this zone. */
    readonly source: EndpointFacts | null
    readonly target: EndpointFacts | null
    readonly scopes: ReadonlyArray<string>
    readonly constraints: Constraints
    readonly ttlSeconds: number | undefined
    readonly inbound: InboundFacts | undefined
    /** An active path already leads from the target back to the source. */
    readonly closesCycle: boolean
  }
  | { readonly _tag: "RevokeDelegation"; readonly reason: string; readonly causeId: string | null }
  | { readonly _tag: "ExpireDelegation" }

export type DelegationEvent =
  | {
    readonly type: "DelegationCreated"
    readonly data: {
      readonly issuerApplicationId: string
      readonly receiverApplicationId: string
      readonly sourceSessionId: string
      readonly targetSessionId: string
      readonly scopes: ReadonlyArray<string>
      readonly constraints: Constraints
      readonly parentEdgeId: string | null
      readonly expiresAt: string
    }
  }
  | { readonly type: "DelegationRevoked"; readonly data: { readonly reason: string; readonly causeId: string | null } }

export type DelegationState =
  | { readonly status: "none" }
  | { readonly status: "active" | "revoked"; readonly expiresAt: string; readonly reason?: string }

export class DelegationRejected extends Data.TaggedError("DelegationRejected")<{
  readonly status: 400 | 403 | 404 | 409
  readonly code: string
  readonly description: string
}> {}

const reject = (status: DelegationRejected["status"], code: string, description: string) =>
  Effect.fail(new DelegationRejected({ status, code, description }))

const ms = (iso: string) => new Date(iso).getTime()
const subset = (inner: ReadonlyArray<string>, outer: ReadonlyArray<string>) => inner.every((x) => outer.includes(x))

const create = (c: Extract<DelegationCommand, { _tag: "CreateDelegation" }>, state: DelegationState, meta: CommandMeta) => {
  if (state.status !== "none") return reject(409, "delegation_exists", "a delegation with this id exists")
  const { source, target, inbound, constraints } = c
  if (source === null) return reject(404, "source_not_found", "source_session_id names no session in this zone")
  if (target === null) return reject(404, "target_not_found", "target_session_id names no session in this zone")
  if (source.id === target.id) return reject(400, "self_delegation", "a session cannot delegate to itself")
  const now = meta.now.getTime()
  for (const [end, name] of [[source, "source"], [target, "target"]] as const) {
    if (end.status === "terminated") return reject(409, "session_not_active", `the ${name} session has ended`)
    if (ms(end.expiresAt) <= now) return reject(409, "session_expired", `the ${name} session's time is up`)
  }
  if (source.applicationId !== c.issuerApplicationId) return reject(403, "forbidden", "the source session is not the issuer's")
  if (target.applicationId !== c.receiverApplicationId) return reject(400, "invalid_request", "the target session is not the receiver's")
  if (c.ttlSeconds === undefined && constraints.expiresAt === undefined) {
    return reject(400, "expiry_required", "a delegation needs ttl_seconds or constraints.expires_at")
  }
  if (c.scopes.length === 0) return reject(400, "invalid_scope", "scopes must not be empty")
  if (c.closesCycle) return reject(409, "delegation_cycle", "this delegation would close a cycle")
  let maxHops = constraints.maxHops
  if (inbound) {
    if (!subset(c.scopes, inbound.scopes)) return reject(403, "scope_not_held", "scopes may only narrow along a delegation path")
    for (const key of ["resources", "actions"] as const) {
      const outer = inbound.constraints[key]
      if (outer && !subset(constraints[key] ?? outer, outer)) return reject(403, "scope_not_held", `${key} may only narrow along a delegation path`)
    }
    const inboundHops = inbound.constraints.maxHops
    if (inboundHops !== undefined) {
      if (inboundHops <= 0) return reject(403, "max_hops_exceeded", "the inbound delegation allows no further hops")
      maxHops = Math.min(maxHops ?? inboundHops - 1, inboundHops - 1)
    }
  }
  const candidates = [
    c.ttlSeconds === undefined ? Infinity : now + c.ttlSeconds * 1000,
    constraints.expiresAt === undefined ? Infinity : ms(constraints.expiresAt),
    ms(source.expiresAt),
    ms(target.expiresAt),
    inbound ? ms(inbound.expiresAt) : Infinity
  ]
  const expiresAt = Math.min(...candidates)
  if (!Number.isFinite(expiresAt) || expiresAt <= now) return reject(400, "expiry_in_past", "the delegation would expire immediately")
  // inherited resources/actions are kept explicitly so the edge carries its own narrowing
  const narrowed: Constraints = {
    ...(constraints.resources ?? inbound?.constraints.resources ? { resources: constraints.resources ?? inbound!.constraints.resources } : {}),
    ...(constraints.actions ?? inbound?.constraints.actions ? { actions: constraints.actions ?? inbound!.constraints.actions } : {}),
    ...(maxHops === undefined ? {} : { maxHops }),
    expiresAt: new Date(expiresAt).toISOString()
  }
  return Effect.succeed<ReadonlyArray<DelegationEvent>>([{
    type: "DelegationCreated",
    data: {
      issuerApplicationId: c.issuerApplicationId,
      receiverApplicationId: c.receiverApplicationId,
      sourceSessionId: source.id,
      targetSessionId: target.id,
      scopes: [...new Set(c.scopes)],
      constraints: narrowed,
      parentEdgeId: inbound?.id ?? null,
      expiresAt: new Date(expiresAt).toISOString()
    }
  }])
}

const none: ReadonlyArray<DelegationEvent> = []

export const delegation: Aggregate<DelegationState, DelegationCommand, DelegationEvent, DelegationRejected> = {
  type: "delegation",
  initialState: { status: "none" },
  decide: (c, state, meta) => {
    if (c._tag === "CreateDelegation") return create(c, state, meta)
    if (state.status === "none") return reject(404, "not_found", "no such delegation")
    if (state.status === "revoked") return Effect.succeed(none)
    if (c._tag === "ExpireDelegation") {
      return ms(state.expiresAt) <= meta.now.getTime()
        ? Effect.succeed([{ type: "DelegationRevoked", data: { reason: "ttl", causeId: null } }])
        : Effect.succeed(none)
    }
    return Effect.succeed([{ type: "DelegationRevoked", data: { reason: c.reason, causeId: c.causeId } }])
  },
  evolve: (state, e) => {
    switch (e.type) {
      case "DelegationCreated":
        return { status: "active", expiresAt: e.data.expiresAt }
      case "DelegationRevoked":
        return state.status === "none" ? state : { ...state, status: "revoked", reason: e.data.reason }
    }
  }
}

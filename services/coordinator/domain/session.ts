// The agent session aggregate: SpawnAgent, SuspendAgent, ResumeAgent, TerminateAgent,
// ExpireAgent → AgentSpawned, AgentSuspended, AgentResumed, AgentTerminated.
//
// Facts beyond one session (its parent, the limits) arrive in the command: the decider
// stays pure. The counting limits (live sessions per zone, per application, children per
// parent) are not decided here but reserved atomically by the database in the spawn's
// write statement (see services/coordinator/migrations/0005_session_counts.ts), which keeps them exact across
// replicas without a lock held over round trips. The same statement refuses a spawn for an
// archived zone or application (403 zone_inactive / application_inactive, see
// services/coordinator/api-status.ts).
//
// Kinds. `instance`: a long-lived agent that may spawn children. `service`: the name
// existing SDKs send for the same thing; it is recorded as sent and behaves as `instance`.
// `ephemeral`: a single task — a leaf that cannot have children, and that holds nothing
// worth resuming, so a suspension from above terminates it (reason `parent_suspended`)
// instead of pausing it.
//
// Depth. A root has depth 0 and a child its parent's depth + 1; a session at depth
// `maxDepth` is allowed, one at `maxDepth + 1` refused (429 max_depth_exceeded).
import { Data, Effect } from "effect"
import type { Aggregate, CommandMeta } from "../../../core/command.ts"

export type AgentKind = "instance" | "service" | "ephemeral"

export interface Limits {
  readonly maxDepth: number
  readonly maxChildren: number
  readonly maxPerZone: number
  readonly maxPerApp: number
  readonly defaultTtlSeconds: number
}

/** The parent as the handler read it from the coordinator's tables (without a lock: see commands.ts). */
export interface ParentFacts {
  readonly id: string
  readonly applicationId: string
  readonly rootId: string
  readonly depth: number
  readonly kind: AgentKind
  readonly status: "active" | "suspended" | "terminated"
  readonly expiresAt: string
}

export type SessionCommand =
  | {
    readonly _tag: "SpawnAgent"
    /** The new session's own id: a root is its own tree's root. */
    readonly id: string
    readonly applicationId: string
    readonly kind: AgentKind
    readonly ttlSeconds: number | undefined
    readonly metadata: Readonly<Record<string, unknown>>
    /** undefined: a root; null: a parent_id that does not exist in this zone. */
    readonly parent: ParentFacts | null | undefined
    readonly limits: Limits
  }
  | { readonly _tag: "SuspendAgent"; readonly cascade: boolean }
  | { readonly _tag: "ResumeAgent"; readonly cascade: boolean }
  | { readonly _tag: "TerminateAgent"; readonly reason: string; readonly causeId: string | null }
  | { readonly _tag: "ExpireAgent" }

export type SessionEvent =
  | {
    readonly type: "AgentSpawned"
    readonly data: {
      readonly applicationId: string
      readonly parentId: string | null
      readonly rootId: string
      readonly depth: number
      readonly kind: AgentKind
      readonly ttlSeconds: number
      readonly expiresAt: string
      readonly metadata: Readonly<Record<string, unknown>>
    }
  }
  | { readonly type: "AgentSuspended"; readonly data: { readonly cascade: boolean } }
  | { readonly type: "AgentResumed"; readonly data: { readonly cascade: boolean } }
  | { readonly type: "AgentTerminated"; readonly data: { readonly reason: string; readonly causeId: string | null } }

interface Live {
  readonly applicationId: string
  readonly parentId: string | null
  readonly rootId: string
  readonly depth: number
  readonly kind: AgentKind
  readonly expiresAt: string
}

export type SessionState =
  | { readonly status: "none" }
  | ({ readonly status: "active" } & Live)
  | ({ readonly status: "suspended"; readonly byCascade: boolean } & Live)
  | ({ readonly status: "terminated"; readonly reason: string } & Live)

/** The answer to a spawn the database refused for a counting limit (see coordinator_reserve). */
export const limitRejection = (code: string, limits: Limits): SessionRejected | undefined => {
  switch (code) {
    case "max_per_zone_exceeded":
      return new SessionRejected({ status: 429, code, description: `a zone has at most ${limits.maxPerZone} live sessions` })
    case "max_per_app_exceeded":
      return new SessionRejected({ status: 429, code, description: `an application has at most ${limits.maxPerApp} live sessions` })
    case "max_children_exceeded":
      return new SessionRejected({ status: 429, code, description: `a session has at most ${limits.maxChildren} children` })
    default:
      return undefined
  }
}

/**
 * The answer to a spawn the database refused because its zone or application is archived
 * (see coordinator_require_active in services/coordinator/migrations/0012_known_principals.ts).
 */
export const inactiveRejection = (code: string): SessionRejected | undefined => {
  switch (code) {
    case "zone_inactive":
      return new SessionRejected({ status: 403, code, description: "the zone is archived" })
    case "application_inactive":
      return new SessionRejected({ status: 403, code, description: "the application is archived" })
    default:
      return undefined
  }
}

export class SessionRejected extends Data.TaggedError("SessionRejected")<{
  readonly status: 400 | 403 | 404 | 409 | 429
  readonly code: string
  readonly description: string
}> {}

const reject = (status: SessionRejected["status"], code: string, description: string) =>
  Effect.fail(new SessionRejected({ status, code, description }))

const expired = (expiresAt: string, now: Date) => new Date(expiresAt).getTime() <= now.getTime()

const spawn = (c: Extract<SessionCommand, { _tag: "SpawnAgent" }>, state: SessionState, meta: CommandMeta) => {
  if (state.status !== "none") return reject(409, "session_exists", "a session with this id exists")
  const { parent, limits } = c
  if (parent === null) return reject(404, "parent_not_found", "parent_id names no session in this zone")
  if (parent) {
    if (parent.status === "terminated" || expired(parent.expiresAt, meta.now)) {
      return reject(409, "parent_not_active", "the parent session has ended")
    }
    if (parent.status !== "active") return reject(409, "parent_not_active", "the parent session is suspended")
    if (parent.kind === "ephemeral") return reject(409, "ephemeral_parent", "an ephemeral session cannot have children")
    // a root is depth 0: maxDepth levels below it are allowed, the next is not
    if (parent.depth + 1 > limits.maxDepth) {
      return reject(429, "max_depth_exceeded", `a session's depth is at most ${limits.maxDepth} (a root is depth 0)`)
    }
  }
  const requested = c.ttlSeconds ?? limits.defaultTtlSeconds
  // a child never outlives its parent
  const parentLeft = parent ? Math.floor((new Date(parent.expiresAt).getTime() - meta.now.getTime()) / 1000) : Infinity
  const ttlSeconds = Math.max(1, Math.min(requested, parentLeft))
  return Effect.succeed<ReadonlyArray<SessionEvent>>([{
    type: "AgentSpawned",
    data: {
      applicationId: c.applicationId,
      parentId: parent?.id ?? null,
      rootId: parent?.rootId ?? c.id,
      depth: parent ? parent.depth + 1 : 0,
      kind: c.kind,
      ttlSeconds,
      expiresAt: new Date(meta.now.getTime() + ttlSeconds * 1000).toISOString(),
      metadata: c.metadata
    }
  }])
}

const none: ReadonlyArray<SessionEvent> = []

export const session: Aggregate<SessionState, SessionCommand, SessionEvent, SessionRejected> = {
  type: "agent",
  initialState: { status: "none" },
  decide: (c, state, meta) => {
    if (c._tag === "SpawnAgent") return spawn(c, state, meta)
    if (state.status === "none") return reject(404, "not_found", "no such session")
    switch (c._tag) {
      case "SuspendAgent":
        if (state.status === "terminated") return reject(409, "session_terminated", "the session has ended")
        if (state.status === "suspended") return Effect.succeed(none)
        // an ephemeral session holds nothing worth resuming: suspension from above ends it
        if (c.cascade && state.kind === "ephemeral") {
          return Effect.succeed([{ type: "AgentTerminated", data: { reason: "parent_suspended", causeId: state.parentId } }])
        }
        return Effect.succeed([{ type: "AgentSuspended", data: { cascade: c.cascade } }])
      case "ResumeAgent":
        if (state.status === "terminated") return reject(409, "session_terminated", "the session has ended")
        if (state.status === "active") return Effect.succeed(none)
        // a session its owner suspended stays suspended when its parent resumes
        if (c.cascade && !state.byCascade) return Effect.succeed(none)
        if (expired(state.expiresAt, meta.now)) return reject(409, "session_expired", "the session's time is up")
        return Effect.succeed([{ type: "AgentResumed", data: { cascade: c.cascade } }])
      case "TerminateAgent":
        if (state.status === "terminated") return Effect.succeed(none)
        return Effect.succeed([{ type: "AgentTerminated", data: { reason: c.reason, causeId: c.causeId } }])
      case "ExpireAgent":
        if (state.status === "terminated" || !expired(state.expiresAt, meta.now)) return Effect.succeed(none)
        return Effect.succeed([{ type: "AgentTerminated", data: { reason: "ttl", causeId: null } }])
    }
  },
  evolve: (state, e) => {
    switch (e.type) {
      case "AgentSpawned": {
        const d = e.data
        return { status: "active", applicationId: d.applicationId, parentId: d.parentId, rootId: d.rootId, depth: d.depth, kind: d.kind, expiresAt: d.expiresAt }
      }
      case "AgentSuspended":
        return state.status === "none" ? state : { ...state, status: "suspended", byCascade: e.data.cascade }
      case "AgentResumed":
        return state.status === "none" ? state : { ...withoutCascade(state), status: "active" }
      case "AgentTerminated":
        return state.status === "none" ? state : { ...withoutCascade(state), status: "terminated", reason: e.data.reason }
    }
  }
}

const withoutCascade = (s: Exclude<SessionState, { status: "none" }>): Live => ({
  applicationId: s.applicationId,
  parentId: s.parentId,
  rootId: s.rootId,
  depth: s.depth,
  kind: s.kind,
  expiresAt: s.expiresAt
})

// The coordinator's deciders: given events, when a command, then events or a rejection.
import { Result } from "effect"
import { describe, expect, it } from "vitest"
import { given, testMeta } from "../../core/testing/decider.ts"
import { events } from "../../services/coordinator/events.ts"
import { delegation, type DelegationCommand, type EndpointFacts } from "../../services/coordinator/domain/delegation.ts"
import { type Limits, type ParentFacts, session, type SessionCommand, type SessionEvent } from "../../services/coordinator/domain/session.ts"

const NOW = "2026-01-01T00:00:00.000Z"
const limits: Limits = { maxDepth: 3, maxChildren: 2, maxPerZone: 5, maxPerApp: 4, defaultTtlSeconds: 3600 }
const spawn = (over: Partial<Extract<SessionCommand, { _tag: "SpawnAgent" }>> = {}): SessionCommand => ({
  _tag: "SpawnAgent", id: "s1", applicationId: "app", kind: "instance", ttlSeconds: undefined, metadata: {},
  parent: undefined, limits, ...over
})
const parent = (over: Partial<ParentFacts> = {}): ParentFacts => ({
  id: "p", applicationId: "app", rootId: "p", depth: 0, kind: "instance", status: "active",
  expiresAt: "2026-01-01T00:10:00.000Z", ...over
})
const spawned = (over: Partial<Extract<SessionEvent, { type: "AgentSpawned" }>["data"]> = {}): SessionEvent => ({
  type: "AgentSpawned",
  data: { applicationId: "app", parentId: null, rootId: "s1", depth: 0, kind: "instance", ttlSeconds: 3600, expiresAt: "2026-01-01T01:00:00.000Z", metadata: {}, ...over }
})

describe("spawning a session", () => {
  it("a root gets the default TTL and is its own root", () => {
    expect(given(session).when(spawn(), testMeta(NOW)).events()).toEqual([spawned()])
  })
  it("a child never outlives its parent", () => {
    const [e] = given(session).when(spawn({ parent: parent(), ttlSeconds: 7200 }), testMeta(NOW)).events()
    expect(e).toMatchObject({ data: { parentId: "p", rootId: "p", depth: 1, ttlSeconds: 600, expiresAt: "2026-01-01T00:10:00.000Z" } })
  })
  it.each([
    // MAX_DEPTH is 3: a child of a depth-3 parent would be depth 4
    ["max_depth_exceeded", 429, spawn({ parent: parent({ depth: 3 }) })],
    ["parent_not_found", 404, spawn({ parent: null })],
    ["parent_not_active", 409, spawn({ parent: parent({ status: "suspended" }) })],
    ["parent_not_active", 409, spawn({ parent: parent({ expiresAt: NOW }) })],
    ["ephemeral_parent", 409, spawn({ parent: parent({ kind: "ephemeral" }) })]
  ] as const)("is refused with %s (%i) and no event", (code, status, command) => {
    expect(given(session).when(command, testMeta(NOW)).error()).toMatchObject({ code, status })
  })
})

describe("depth counts from 0 at the root", () => {
  it("a session at depth MAX_DEPTH is allowed; one deeper is refused", () => {
    const [e] = given(session).when(spawn({ parent: parent({ depth: limits.maxDepth - 1 }) }), testMeta(NOW)).events()
    expect(e).toMatchObject({ data: { depth: limits.maxDepth } })
    expect(given(session).when(spawn({ parent: parent({ depth: limits.maxDepth }) }), testMeta(NOW)).error())
      .toMatchObject({ status: 429, code: "max_depth_exceeded" })
  })
})

describe("a session of kind service", () => {
  const history = [spawned({ kind: "service" })]
  it("is recorded as sent, in an AgentSpawned v1 the event schema accepts", () => {
    const [e] = given(session).when(spawn({ kind: "service" }), testMeta(NOW)).events()
    expect(e).toEqual(spawned({ kind: "service" }))
    expect(Result.isSuccess(events.decode("AgentSpawned", 1, events.encode("AgentSpawned", e!.data).json))).toBe(true)
  })
  it("behaves as an instance: it may have children, and a suspension from above pauses it", () => {
    const [child] = given(session).when(spawn({ parent: parent({ kind: "service" }) }), testMeta(NOW)).events()
    expect(child).toMatchObject({ data: { parentId: "p", depth: 1 } })
    expect(given(session, history).when({ _tag: "SuspendAgent", cascade: true }).events()).toEqual([{ type: "AgentSuspended", data: { cascade: true } }])
  })
})

describe("a counting limit the database refused at write", () => {
  it("answers 429 with its own code", async () => {
    const { limitRejection } = await import("../../services/coordinator/domain/session.ts")
    for (const code of ["max_per_zone_exceeded", "max_per_app_exceeded", "max_children_exceeded"]) {
      expect(limitRejection(code, limits)).toMatchObject({ status: 429, code })
    }
    expect(limitRejection("something_else", limits)).toBeUndefined()
  })
})

describe("when a session is active", () => {
  const history = [spawned()]
  it("suspends, and a second suspend decides nothing", () => {
    expect(given(session, history).when({ _tag: "SuspendAgent", cascade: false }).events()).toEqual([{ type: "AgentSuspended", data: { cascade: false } }])
    expect(given(session, [...history, { type: "AgentSuspended", data: { cascade: false } }]).when({ _tag: "SuspendAgent", cascade: false }).events()).toEqual([])
  })
  it("terminates once; terminating again decides nothing", () => {
    expect(given(session, history).when({ _tag: "TerminateAgent", reason: "done", causeId: null }).events()).toHaveLength(1)
    expect(given(session, [...history, { type: "AgentTerminated", data: { reason: "done", causeId: null } }]).when({ _tag: "TerminateAgent", reason: "x", causeId: null }).events()).toEqual([])
  })
  it("expires with reason ttl only when its time is up", () => {
    expect(given(session, history).when({ _tag: "ExpireAgent" }, testMeta("2026-01-01T00:59:59.000Z")).events()).toEqual([])
    expect(given(session, history).when({ _tag: "ExpireAgent" }, testMeta("2026-01-01T01:00:00.000Z")).events()).toEqual([
      { type: "AgentTerminated", data: { reason: "ttl", causeId: null } }
    ])
  })
})

describe("when an ephemeral session's parent is suspended", () => {
  it("it is terminated, not suspended: it holds nothing worth resuming", () => {
    const history = [spawned({ kind: "ephemeral", parentId: "p" })]
    expect(given(session, history).when({ _tag: "SuspendAgent", cascade: true }).events()).toEqual([
      { type: "AgentTerminated", data: { reason: "parent_suspended", causeId: "p" } }
    ])
    // its owner may still pause it directly
    expect(given(session, history).when({ _tag: "SuspendAgent", cascade: false }).events()).toEqual([{ type: "AgentSuspended", data: { cascade: false } }])
  })
})

describe("when a parent resumes", () => {
  it("resumes children it suspended, not those their owner suspended", () => {
    const byCascade = [spawned(), { type: "AgentSuspended", data: { cascade: true } } as SessionEvent]
    const byOwner = [spawned(), { type: "AgentSuspended", data: { cascade: false } } as SessionEvent]
    expect(given(session, byCascade).when({ _tag: "ResumeAgent", cascade: true }).events()).toHaveLength(1)
    expect(given(session, byOwner).when({ _tag: "ResumeAgent", cascade: true }).events()).toEqual([])
  })
})

const end = (over: Partial<EndpointFacts> = {}): EndpointFacts => ({ id: "a", applicationId: "issuer", status: "active", expiresAt: "2026-01-01T01:00:00.000Z", ...over })
const create = (over: Partial<Extract<DelegationCommand, { _tag: "CreateDelegation" }>> = {}): DelegationCommand => ({
  _tag: "CreateDelegation", issuerApplicationId: "issuer", receiverApplicationId: "receiver",
  source: end(), target: end({ id: "b", applicationId: "receiver" }), scopes: ["read"], constraints: {}, ttlSeconds: 600,
  inbound: undefined, closesCycle: false, ...over
})

describe("creating a delegation", () => {
  it("expires at the earliest of its TTL, constraints.expires_at and its endpoints", () => {
    const [e] = given(delegation).when(create({ ttlSeconds: 7200, target: end({ id: "b", applicationId: "receiver", expiresAt: "2026-01-01T00:30:00.000Z" }) }), testMeta(NOW)).events()
    expect(e).toMatchObject({ data: { expiresAt: "2026-01-01T00:30:00.000Z", parentEdgeId: null } })
  })
  it("only narrows along a path", () => {
    const inbound = { id: "e0", scopes: ["read", "write"], constraints: { resources: ["r1", "r2"], maxHops: 1 }, expiresAt: "2026-01-01T00:20:00.000Z" }
    const [e] = given(delegation).when(create({ inbound, scopes: ["read"], constraints: { resources: ["r1"] } }), testMeta(NOW)).events()
    expect(e).toMatchObject({ data: { parentEdgeId: "e0", constraints: { resources: ["r1"], maxHops: 0 }, expiresAt: "2026-01-01T00:10:00.000Z" } })
    expect(given(delegation).when(create({ inbound, scopes: ["admin"] }), testMeta(NOW)).error()).toMatchObject({ status: 403, code: "scope_not_held" })
    expect(given(delegation).when(create({ inbound, constraints: { resources: ["r3"] } }), testMeta(NOW)).error()).toMatchObject({ code: "scope_not_held" })
    expect(given(delegation).when(create({ inbound: { ...inbound, constraints: { maxHops: 0 } } }), testMeta(NOW)).error()).toMatchObject({ code: "max_hops_exceeded" })
  })
  it.each([
    ["self_delegation", 400, create({ target: end({ id: "a", applicationId: "receiver" }) })],
    ["expiry_required", 400, create({ ttlSeconds: undefined })],
    ["delegation_cycle", 409, create({ closesCycle: true })],
    ["source_not_found", 404, create({ source: null })],
    ["target_not_found", 404, create({ target: null })],
    ["session_not_active", 409, create({ source: end({ status: "terminated" }) })],
    ["session_expired", 409, create({ target: end({ id: "b", applicationId: "receiver", expiresAt: NOW }) })],
    ["forbidden", 403, create({ issuerApplicationId: "other" })]
  ] as const)("is refused with %s (%i)", (code, status, command) => {
    expect(given(delegation).when(command, testMeta(NOW)).error()).toMatchObject({ code, status })
  })
  it("revokes once", () => {
    const created = given(delegation).when(create(), testMeta(NOW)).events()
    const revoked = given(delegation, created).when({ _tag: "RevokeDelegation", reason: "revoked", causeId: null }).events()
    expect(revoked).toEqual([{ type: "DelegationRevoked", data: { reason: "revoked", causeId: null } }])
    expect(given(delegation, [...created, ...revoked]).when({ _tag: "RevokeDelegation", reason: "again", causeId: null }).events()).toEqual([])
  })
})

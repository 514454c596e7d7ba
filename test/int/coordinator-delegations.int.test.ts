// Delegations over HTTP: narrowing, expiry, cycles, consent, reads, and revocation of a
// chain with its dependent sessions and published revocations.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeConsumer } from "../../core/consumer.ts"
import { signingKey, Verifier } from "../../core/signing.ts"
import { events } from "../../services/coordinator/events.ts"
import { type CoordinatorHarness, startCoordinator } from "../fixtures/coordinator.ts"
import { until } from "../fixtures/harness.ts"

let h: CoordinatorHarness
const tokens: Record<string, string> = {}
beforeAll(async () => {
  h = await startCoordinator("co_deleg")
  for (const app of ["app-1", "app-2", "app-3"]) tokens[app] = await h.token(app, { scope: "agent:lifecycle delegation:grant" })
  tokens.plain = await h.token("app-1")
})
afterAll(() => h.close())

const session = async (app: string, body: Record<string, unknown> = {}) =>
  (await h.call("POST", "/zones/z1/agents", { token: tokens[app], body: { application_id: app, ...body } })).body.id as string

const delegate = (issuer: string, receiver: string, source: string, target: string, more: Record<string, unknown> = {}, token = tokens[issuer]) =>
  h.call("POST", "/zones/z1/delegations", {
    token,
    body: { issuer_application_id: issuer, receiver_application_id: receiver, source_session_id: source, target_session_id: target, scopes: ["read", "write"], ttl_seconds: 600, ...more }
  })

describe("when a chain A → B → C is revoked at its first edge", () => {
  it("both edges are revoked, B and C end, and every revocation is published", async () => {
    const [a, b, c] = [await session("app-1"), await session("app-2"), await session("app-3")]
    const ab = await delegate("app-1", "app-2", a, b, { constraints: { resources: ["r1", "r2"], max_depth: 2 } })
    expect(ab.status).toBe(201)
    expect(ab.body).toMatchObject({ scopes: ["read", "write"], constraints: { resources: ["r1", "r2"], max_hops: 2 }, parent_edge_id: null, status: "active" })
    const bc = await delegate("app-2", "app-3", b, c, { scopes: ["read"] })
    expect(bc.status).toBe(201)
    // authority narrowed along the path: C's edge inherits B's resources, one hop fewer
    expect(bc.body).toMatchObject({ scopes: ["read"], parent_edge_id: ab.body.id, constraints: { resources: ["r1", "r2"], max_hops: 1 } })
    expect((await h.call("GET", `/zones/z1/delegations/${ab.body.id}/traverse`, { token: tokens["app-1"] })).body.items.map((e: any) => [e.id, e.hop]))
      .toEqual([[ab.body.id, 0], [bc.body.id, 1]])
    expect((await h.call("GET", `/zones/z1/agents/${b}/delegations`, { token: tokens["app-2"] })).body).toMatchObject({
      inbound: [{ id: ab.body.id }], outbound: [{ id: bc.body.id }]
    })

    const revocations: Array<string> = []
    const consumer = makeConsumer({
      redis: h.redis, streams: [h.keys.stream("revocation")], group: "g-deleg", registry: events,
      verifier: new Verifier([signingKey(h.streamsKey)]), deadLetterStream: h.keys.deadLetters, blockMs: 100,
      handle: async (e) => void revocations.push(`${e.envelope.type}:${e.envelope.aggregate.id}`)
    })
    const consuming = consumer.run()
    try {
      const r = await h.call("POST", `/zones/z1/delegations/${ab.body.id}/revoke`, { token: tokens["app-1"], body: { reason: "compromised" } })
      expect(r.body).toMatchObject({ status: "revoked", revoke_reason: "compromised" })
      expect((await h.call("GET", `/zones/z1/delegations/${bc.body.id}`, { token: tokens["app-2"] })).body).toMatchObject({ status: "revoked", revoke_reason: "compromised" })
      expect((await h.call("GET", `/zones/z1/agents/${b}`, { token: tokens["app-2"] })).body).toMatchObject({ status: "terminated", end_reason: "delegation_revoked", end_cause_id: ab.body.id })
      expect((await h.call("GET", `/zones/z1/agents/${c}`, { token: tokens["app-3"] })).body).toMatchObject({ status: "terminated", end_reason: "delegation_revoked" })
      expect((await h.call("GET", `/zones/z1/agents/${a}`, { token: tokens["app-1"] })).body.status).toBe("active")
      const expected = [`DelegationRevoked:${ab.body.id}`, `DelegationRevoked:${bc.body.id}`, `AgentTerminated:${b}`, `AgentTerminated:${c}`]
      await until(() => expected.every((x) => revocations.includes(x)), 10_000, "revocations published")
    } finally {
      consumer.stop()
      await consuming
    }
    // a later delegation from the revoked edge's target is refused
    const d = await session("app-3")
    expect((await delegate("app-2", "app-3", b, d)).body).toMatchObject({ error: "session_not_active" })
  })
})

describe("revoking with PATCH, as existing clients do", () => {
  it("PATCH /delegations/{id}/revoke revokes as POST does, also under /v1", async () => {
    for (const prefix of ["", "/v1"]) {
      const [a, b] = [await session("app-1"), await session("app-2")]
      const e = await delegate("app-1", "app-2", a, b)
      expect(e.status).toBe(201)
      const r = await h.call("PATCH", `${prefix}/zones/z1/delegations/${e.body.id}/revoke`, { token: tokens["app-1"], body: { reason: "rotated" } })
      expect([prefix, r.status, r.body]).toMatchObject([prefix, 200, { id: e.body.id, status: "revoked", revoke_reason: "rotated" }])
      expect((await h.call("GET", `/zones/z1/agents/${b}`, { token: tokens["app-2"] })).body).toMatchObject({ status: "terminated", end_reason: "delegation_revoked" })
    }
    // only the issuer revokes, whatever the method
    const [a, b] = [await session("app-1"), await session("app-2")]
    const e = await delegate("app-1", "app-2", a, b)
    expect((await h.call("PATCH", `/zones/z1/delegations/${e.body.id}/revoke`, { token: tokens["app-2"] })).status).toBe(403)
  })
})

describe("creating delegations", () => {
  it("refuses what would widen authority, loop, lack expiry, lack consent or name unknown sessions", async () => {
    const [a, b, c] = [await session("app-1"), await session("app-2"), await session("app-3")]
    const ab = await delegate("app-1", "app-2", a, b, { scopes: ["read"] })
    expect(ab.status).toBe(201)
    const cases: Array<[string, Promise<{ status: number; body: any }>, number, string]> = [
      ["self", delegate("app-1", "app-1", a, a), 400, "self_delegation"],
      ["widening", delegate("app-2", "app-3", b, c, { scopes: ["read", "admin"] }), 403, "scope_not_held"],
      ["cycle", delegate("app-2", "app-1", b, a), 409, "delegation_cycle"],
      ["no expiry", delegate("app-1", "app-3", a, c, { ttl_seconds: undefined }), 400, "expiry_required"],
      ["no consent", delegate("app-1", "app-3", a, c, {}, tokens.plain), 403, "consent_required"],
      ["unknown source", delegate("app-1", "app-2", "nope", b), 404, "source_not_found"],
      ["not the issuer's session", delegate("app-1", "app-3", b, c), 403, "forbidden"],
      ["empty scopes", delegate("app-1", "app-3", a, c, { scopes: [] }), 400, "invalid_scope"],
      ["bad body", h.call("POST", "/zones/z1/delegations", { token: tokens["app-1"], body: { scopes: 5 } }), 400, "invalid_request"],
      ["unknown delegation", h.call("GET", "/zones/z1/delegations/nope", { token: tokens["app-1"] }), 404, "not_found"],
      ["past expiry", delegate("app-1", "app-3", a, c, { ttl_seconds: undefined, constraints: { expires_at: "2000-01-01T00:00:00Z" } }), 400, "expiry_in_past"]
    ]
    for (const [name, pending, status, code] of cases) {
      const r = await pending
      expect([name, r.status, r.body?.error]).toEqual([name, status, code])
    }
    // a space-separated scope string (OAuth style) and constraints.expires_at alone are accepted
    const ok = await delegate("app-1", "app-3", a, c, { scopes: "read write", ttl_seconds: undefined, constraints: { expires_at: new Date(Date.now() + 60_000).toISOString() } })
    expect(ok.status).toBe(201)
    expect(ok.body.scopes).toEqual(["read", "write"])
  })

  it("expire with their TTL, and never after their endpoints", async () => {
    const a = await session("app-1", { ttl_seconds: 2 })
    const b = await session("app-2")
    const e = await delegate("app-1", "app-2", a, b, { ttl_seconds: 3600 })
    expect(new Date(e.body.expires_at).getTime()).toBeLessThanOrEqual(Date.now() + 2500)
    await until(async () => (await h.call("GET", `/zones/z1/delegations/${e.body.id}`, { token: tokens["app-1"] })).body.status === "revoked", 10_000, "edge expired")
    // the source session expired; the target keeps running (only explicit revocations end targets)
    expect((await h.call("GET", `/zones/z1/agents/${b}`, { token: tokens["app-2"] })).body.status).toBe("active")
  })
})

// Agent sessions over HTTP: spawn, read, list, tree, suspend/resume/terminate with cascades,
// idempotency, TTL, depth, kinds, bad input, and reads while Postgres is down.
import net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startService } from "../../core/testing/index.ts"
import { until } from "../fixtures/harness.ts"
import { type CoordinatorHarness, startCoordinator } from "../fixtures/coordinator.ts"

let h: CoordinatorHarness
let token: string
beforeAll(async () => {
  h = await startCoordinator("co_sessions", { MAX_PER_ZONE: "500", MAX_PER_APP: "500" })
  token = await h.token("app-a")
})
afterAll(() => h.close())

const spawn = async (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
  h.call("POST", "/zones/z1/agents", { token, body: { application_id: "app-a", ...body }, headers })

describe("spawning", () => {
  it("creates a root session and returns it with 201 and an id", async () => {
    const r = await spawn({ metadata: { task: "x" }, session_sid: "legacy-field", some_future_field: { x: 1 } })
    expect(r.status).toBe(201)
    expect(r.body).toMatchObject({ application_id: "app-a", parent_id: null, depth: 0, kind: "instance", status: "active", ttl_seconds: 3600, metadata: { task: "x" } })
    expect(r.body.root_id).toBe(r.body.id)
    const got = await h.call("GET", `/zones/z1/agents/${r.body.id}`, { token })
    expect(got).toMatchObject({ status: 200, body: { id: r.body.id } })
    // the same routes under /v1
    expect((await h.call("GET", `/v1/zones/z1/agents/${r.body.id}`, { token })).status).toBe(200)
  })

  it("honours Idempotency-Key: a repeat returns the same session with 200 and no new session", async () => {
    const first = await spawn({}, { "idempotency-key": "k-123" })
    const again = await spawn({}, { "idempotency-key": "k-123" })
    expect(first.status).toBe(201)
    expect(again.status).toBe(200)
    expect(again.body.id).toBe(first.body.id)
  })

  it("answers 422 idempotency_key_reused for the same key with a different body; the same body in another key order replays", async () => {
    const first = await spawn({ metadata: { a: 1, b: 2 } }, { "idempotency-key": "k-body" })
    expect(first.status).toBe(201)
    const reordered = await spawn({ metadata: { b: 2, a: 1 } }, { "idempotency-key": "k-body" })
    expect(reordered).toMatchObject({ status: 200, body: { id: first.body.id } })
    const other = await spawn({ metadata: { a: 1, b: 3 } }, { "idempotency-key": "k-body" })
    expect(other).toMatchObject({ status: 422, body: { error: "idempotency_key_reused" } })
  })

  it("returns a spawn's key's session only while it lives: once it ended, the same key spawns a new session", async () => {
    // existing SDKs derive the key from (application, parent, kind): a second child sends the first child's key
    const parent = await spawn({})
    const key = { "idempotency-key": `app-a:${parent.body.id}:instance` }
    const first = await spawn({ parent_id: parent.body.id }, key)
    expect(first.status).toBe(201)
    expect((await spawn({ parent_id: parent.body.id }, key)).body.id).toBe(first.body.id)
    expect((await h.call("DELETE", `/zones/z1/agents/${first.body.id}`, { token, body: { reason: "done" } })).status).toBe(200)
    const second = await spawn({ parent_id: parent.body.id }, key)
    expect(second.status).toBe(201)
    expect(second.body.id).not.toBe(first.body.id)
    expect(second.body.status).toBe("active")
    // and the new session now holds the key
    expect((await spawn({ parent_id: parent.body.id }, key)).body.id).toBe(second.body.id)
  })

  it("caps a child's TTL at its parent's remaining time", async () => {
    const root = await spawn({ ttl_seconds: 60 })
    const child = await spawn({ parent_id: root.body.id, ttl_seconds: 7200 })
    expect(child.status).toBe(201)
    expect(child.body.ttl_seconds).toBeLessThanOrEqual(60)
    expect(new Date(child.body.expires_at).getTime()).toBeLessThanOrEqual(new Date(root.body.expires_at).getTime())
    expect(child.body).toMatchObject({ parent_id: root.body.id, root_id: root.body.id, depth: 1 })
  })

  it("refuses children under an ephemeral session", async () => {
    const eph = await spawn({ kind: "ephemeral" })
    const r = await spawn({ parent_id: eph.body.id })
    expect(r).toMatchObject({ status: 409, body: { error: "ephemeral_parent" } })
  })
})

describe("depth, as the reference configuration counts it", () => {
  it("a root is depth 0; a session at depth MAX_DEPTH (10) is allowed, one at 11 gets 429 max_depth_exceeded", async () => {
    let at = await spawn({})
    for (let depth = 1; depth <= 10; depth++) {
      at = await spawn({ parent_id: at.body.id })
      expect([depth, at.status, at.body.depth]).toEqual([depth, 201, depth])
    }
    expect(await spawn({ parent_id: at.body.id })).toMatchObject({ status: 429, body: { error: "max_depth_exceeded" } })
  })
})

describe("kind service, as existing SDKs send it", () => {
  it("is accepted and behaves as instance: it has children, and its parent's suspension pauses it", async () => {
    const root = await spawn({})
    const svc = await spawn({ parent_id: root.body.id, kind: "service" })
    expect(svc).toMatchObject({ status: 201, body: { kind: "service", depth: 1 } })
    expect((await spawn({ parent_id: svc.body.id })).status).toBe(201)
    await h.call("POST", `/zones/z1/agents/${root.body.id}/suspend`, { token })
    expect((await h.call("GET", `/zones/z1/agents/${svc.body.id}`, { token })).body).toMatchObject({ status: "suspended", suspended_by_cascade: true })
  })
})

describe("when a root with a subtree is suspended, resumed and terminated", () => {
  it("each change reaches every session below, one event each", async () => {
    const root = await spawn({})
    const a = await spawn({ parent_id: root.body.id })
    const b = await spawn({ parent_id: a.body.id })
    const eph = await spawn({ parent_id: root.body.id, kind: "ephemeral" })
    const owned = await spawn({ parent_id: root.body.id })
    // its owner pauses this one itself: the parent's resume must not wake it
    await h.call("POST", `/zones/z1/agents/${owned.body.id}/suspend`, { token })

    expect((await h.call("POST", `/zones/z1/agents/${root.body.id}/suspend`, { token })).body.status).toBe("suspended")
    const tree = async () => Object.fromEntries((await h.call("GET", `/zones/z1/agents/${root.body.id}/tree`, { token })).body.items.map((s: any) => [s.id, s]))
    let t = await tree()
    expect([t[a.body.id].status, t[b.body.id].status, t[eph.body.id].status, t[owned.body.id].status]).toEqual(["suspended", "suspended", "terminated", "suspended"])
    expect(t[eph.body.id].end_reason).toBe("parent_suspended")

    await h.call("POST", `/zones/z1/agents/${root.body.id}/resume`, { token })
    t = await tree()
    expect([t[root.body.id].status, t[a.body.id].status, t[b.body.id].status, t[owned.body.id].status]).toEqual(["active", "active", "active", "suspended"])

    const del = await h.call("DELETE", `/zones/z1/agents/${root.body.id}`, { token, body: { reason: "done" } })
    expect(del.body).toMatchObject({ status: "terminated", end_reason: "done" })
    t = await tree()
    expect(Object.values(t).every((s: any) => s.status === "terminated")).toBe(true)
    expect(t[b.body.id]).toMatchObject({ end_reason: "parent_terminated", end_cause_id: a.body.id })
    // deleting again is harmless
    expect((await h.call("DELETE", `/zones/z1/agents/${root.body.id}`, { token })).status).toBe(200)
  })
})

describe("when a session's TTL runs out", () => {
  it("it and its subtree expire with reason ttl", async () => {
    const root = await spawn({ ttl_seconds: 1 })
    const child = await spawn({ parent_id: root.body.id })
    const grandchild = await spawn({ parent_id: child.body.id })
    await until(async () => (await h.call("GET", `/zones/z1/agents/${grandchild.body.id}`, { token })).body.status === "terminated", 10_000, "expired")
    for (const id of [root.body.id, child.body.id, grandchild.body.id]) {
      expect((await h.call("GET", `/zones/z1/agents/${id}`, { token })).body).toMatchObject({ status: "terminated", end_reason: "ttl" })
    }
  })
})

describe("listing", () => {
  it("pages through the caller's sessions with a cursor, newest first", async () => {
    const other = await h.token("app-list")
    const ids: Array<string> = []
    for (let i = 0; i < 5; i++) ids.push((await h.call("POST", "/zones/z1/agents", { token: other, body: { application_id: "app-list" } })).body.id)
    const seen: Array<string> = []
    let cursor: string | null = null
    do {
      const r: { status: number; body: any } = await h.call("GET", `/zones/z1/agents?limit=2${cursor ? `&cursor=${cursor}` : ""}`, { token: other })
      expect(r.status).toBe(200)
      seen.push(...r.body.items.map((s: any) => s.id))
      cursor = r.body.next_cursor
    } while (cursor)
    expect(seen).toEqual([...ids].reverse())
    // pages of 1-500, as existing clients ask for
    expect((await h.call("GET", "/zones/z1/agents?limit=500", { token: other })).body.items.map((s: any) => s.id)).toEqual([...ids].reverse())
    expect((await h.call("GET", "/v1/zones/z1/agents?limit=1", { token: other })).body.items).toHaveLength(1)
    for (const bad of ["501", "1000", "0", "-1", "ten"]) {
      expect([bad, (await h.call("GET", `/zones/z1/agents?limit=${bad}`, { token: other })).body?.error]).toEqual([bad, "invalid_request"])
    }
    // another application's sessions are not listed to this caller
    expect((await h.call("GET", "/zones/z1/agents?application_id=app-a", { token: other })).status).toBe(403)
  })
})

describe("bad requests", () => {
  it("answer with a 4xx and a stable code, never a 500", async () => {
    const foreign = await h.token("app-a", { zone: "z2" })
    const noScope = await h.token("app-a", { scope: "something:else" })
    const s = await spawn({})
    const cases: Array<[string, Promise<{ status: number; body: any }>, number, string]> = [
      ["no token", h.call("POST", "/zones/z1/agents", { body: { application_id: "app-a" } }), 401, "invalid_token"],
      ["garbage token", h.call("GET", "/zones/z1/agents", { token: "abc.def.ghi" }), 401, "invalid_token"],
      ["foreign zone", h.call("GET", `/zones/z1/agents/${s.body.id}`, { token: foreign }), 403, "zone_mismatch"],
      ["missing scope", h.call("GET", `/zones/z1/agents/${s.body.id}`, { token: noScope }), 403, "missing_scope"],
      ["other application", h.call("POST", "/zones/z1/agents", { token, body: { application_id: "app-b" } }), 403, "forbidden"],
      ["unknown id", h.call("GET", "/zones/z1/agents/nope", { token }), 404, "not_found"],
      ["unknown parent", spawn({ parent_id: "nope" }), 404, "parent_not_found"],
      ["malformed JSON", h.call("POST", "/zones/z1/agents", { token, raw: "{", headers: { "content-type": "application/json" } }), 400, "invalid_request"],
      ["missing application", h.call("POST", "/zones/z1/agents", { token, body: {} }), 400, "invalid_request"],
      ["bad kind", spawn({ kind: "forever" }), 400, "invalid_request"],
      ["bad ttl", spawn({ ttl_seconds: -5 }), 400, "invalid_request"],
      ["huge metadata", spawn({ metadata: { blob: "x".repeat(20_000) } }), 400, "invalid_request"],
      ["bad cursor", h.call("GET", "/zones/z1/agents?cursor=zzz", { token }), 400, "invalid_request"],
      ["bad limit", h.call("GET", "/zones/z1/agents?limit=0", { token }), 400, "invalid_request"],
      ["bad zone id", h.call("GET", "/zones/bad%20zone/agents", { token }), 404, "not_found"],
      ["bad idempotency key", spawn({}, { "idempotency-key": "x".repeat(300) }), 400, "invalid_request"],
      ["bad direction", h.call("GET", `/zones/z1/agents/${s.body.id}/delegations?direction=up`, { token }), 400, "invalid_request"]
    ]
    for (const [name, pending, status, code] of cases) {
      const r = await pending
      expect([name, r.status, r.body?.error]).toEqual([name, status, code])
    }
    const raw = await fetch(`${h.url}/zones/z1/agents`)
    expect(raw.headers.get("www-authenticate")).toBe('Bearer error="invalid_token"')
  })
})

/** A TCP proxy in front of Postgres that can be cut: open connections reset, new ones refused. */
const tcpProxy = async (target: URL) => {
  const sockets = new Set<net.Socket>()
  const track = (s: net.Socket) => {
    sockets.add(s)
    s.on("close", () => sockets.delete(s))
    s.on("error", () => {})
  }
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    track(client)
    track(upstream)
    client.pipe(upstream).pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const url = new URL(target)
  url.host = `127.0.0.1:${(server.address() as net.AddressInfo).port}`
  return {
    url: url.toString(),
    cut: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of sockets) s.destroy()
      })
  }
}

describe("when Postgres stops answering after start-up", () => {
  it("reads answer 503 temporarily_unavailable, not 500", async () => {
    const s = await spawn({})
    const proxy = await tcpProxy(new URL(h.dbUrl))
    const replica = await startService("coordinator", { ...h.env, DATABASE_URL: proxy.url })
    try {
      const read = (path: string) => h.call("GET", path, { token, base: replica.url })
      expect((await read(`/zones/z1/agents/${s.body.id}`)).status).toBe(200)
      await proxy.cut()
      for (const path of [
        `/zones/z1/agents/${s.body.id}`,
        "/zones/z1/agents",
        `/zones/z1/agents/${s.body.id}/tree`,
        `/v1/zones/z1/agents/${s.body.id}/children`,
        `/zones/z1/agents/${s.body.id}/delegations`,
        "/zones/z1/delegations/some-edge",
        "/v1/zones/z1/delegations/some-edge/traverse"
      ]) {
        const r = await read(path)
        expect([path, r.status, r.body]).toEqual([path, 503, { error: "temporarily_unavailable", error_description: expect.any(String) }])
      }
    } catch (e) {
      // a coordinator that died shows up as a reset connection: its output says why
      console.log(`coordinator output:\n${replica.stderr().slice(-4000)}\n${replica.stdout().slice(-2000)}`)
      throw e
    } finally {
      await replica.stop("SIGKILL")
      await proxy.cut()
    }
  })
})

// @caracal/sdk against the real sts, api and coordinator: sessions run a function and end,
// children, delegations narrowing authority, per-call exchanges as the current agent,
// typed errors with the server's codes, one Idempotency-Key across a spawn's retries, and
// the governed fetch's exact request at a local listener standing in for the gateway.
import { createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Caracal, CaracalConfigError, CaracalError, CoordinatorClient } from "../../sdk/src/index.ts"
import { type Recorder, startRecorder } from "../fixtures/recorder.ts"
import { startZone, type ZoneHarness } from "../fixtures/zone.ts"

let z: ZoneHarness
let gateway: Recorder
let upstream: Recorder
let subjectToken: string

/**
 * A proxy in front of a service that forwards every request but destroys the connection
 * instead of answering the first one `drop` picks: the request was served, its answer lost.
 */
const dropFirstAnswer = async (targetUrl: string, drop: (method: string) => boolean) => {
  const seen: Array<{ method: string; headers: Record<string, string | string[] | undefined> }> = []
  let dropped = false
  const target = new URL(targetUrl)
  const proxy = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      seen.push({ method: req.method ?? "", headers: req.headers })
      const up = httpRequest({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (ur) => {
        const body: Array<Buffer> = []
        ur.on("data", (c: Buffer) => body.push(c))
        ur.on("end", () => {
          if (!dropped && drop(req.method ?? "")) {
            dropped = true
            return req.socket.destroy()
          }
          res.writeHead(ur.statusCode ?? 500, ur.headers)
          res.end(Buffer.concat(body))
        })
      })
      up.end(Buffer.concat(chunks))
    })
  })
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r))
  return {
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    seen,
    close: () => {
      proxy.closeAllConnections()
      return new Promise<void>((r) => proxy.close(() => r()))
    }
  }
}

const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as Record<string, any>

const client = (over: Partial<ConstructorParameters<typeof Caracal>[0]> = {}) =>
  new Caracal({
    coordinator: new CoordinatorClient({ baseUrl: z.coordinator.url }),
    zoneId: z.zoneId,
    applicationId: z.app.id,
    subjectToken,
    gatewayUrl: gateway.url,
    stsUrl: z.h.sts.url,
    resources: [
      { resourceId: "api", upstreamPrefix: "http://upstream.test" },
      { resourceId: "reports", upstreamPrefix: "http://upstream.test/reports" }
    ],
    ...over
  })

beforeAll(async () => {
  // MAX_DEPTH=1: a grandchild is refused, to see a typed error with its code
  z = await startZone("sdk", { coordinatorVars: { MAX_DEPTH: "1" } })
  gateway = await startRecorder()
  upstream = await startRecorder()
  subjectToken = await z.ambient()
}, 180_000)
afterAll(async () => {
  await gateway?.close()
  await upstream?.close()
  await z?.close()
})

describe("sessions", () => {
  it("spawn runs the function as the agent (current() across awaits) and ends the session after it", async () => {
    const caracal = client()
    expect(caracal.current()).toBeUndefined()
    let seen: string | undefined
    const id = await caracal.spawn(async (agent) => {
      await new Promise((r) => setTimeout(r, 5))
      seen = await Promise.resolve().then(() => caracal.current()?.id)
      expect((await agent.refresh()).status).toBe("active")
      return agent.id
    }, { metadata: { task: "t1" } })
    expect(seen).toBe(id)
    expect(caracal.current()).toBeUndefined()
    const view = await caracal.coordinator.get(z.zoneId, id, { token: subjectToken })
    expect(view).toMatchObject({ status: "terminated", end_reason: "completed", kind: "instance", application_id: z.app.id })
  })

  it("keepAlive leaves the session running; a throwing function ends it as failed and rethrows", async () => {
    const caracal = client({ defaultKind: "service", defaultTtlSeconds: 120 })
    const kept = await caracal.spawn((a) => a, { keepAlive: true })
    const view = await kept.refresh()
    expect(view).toMatchObject({ status: "active", kind: "service", ttl_seconds: 120 })
    await kept.end()
    let failedId = ""
    await expect(caracal.spawn((a) => {
      failedId = a.id
      throw new Error("work failed")
    })).rejects.toThrow("work failed")
    expect(await caracal.coordinator.get(z.zoneId, failedId, { token: subjectToken })).toMatchObject({ status: "terminated", end_reason: "failed" })
  })

  it("children: spawn inside an agent makes a child; past MAX_DEPTH a CaracalError carries max_depth_exceeded", async () => {
    const caracal = client()
    await caracal.spawn(async (root) => {
      await caracal.spawnChild(async (child) => {
        expect(child.parentId).toBe(root.id)
        expect(child.depth).toBe(1)
        expect(caracal.current()?.id).toBe(child.id)
        const tree = await caracal.coordinator.tree(z.zoneId, root.id, { token: subjectToken })
        expect(tree.map((s) => s.id)).toEqual([root.id, child.id])
        const err = await caracal.spawnChild(() => 1).catch((e: unknown) => e)
        expect(err).toBeInstanceOf(CaracalError)
        expect(err).toMatchObject({ code: "max_depth_exceeded", status: 429, service: "coordinator" })
      })
      // back in the root after the child returned
      expect(caracal.current()?.id).toBe(root.id)
    })
    await expect(client().spawnChild(() => 1)).rejects.toMatchObject({ code: "no_current_agent" })
  })

  it("one Idempotency-Key per logical spawn, resent on the retry after a lost answer: one session", async () => {
    // the first spawn reaches the coordinator, its answer is lost
    const proxy = await dropFirstAnswer(z.coordinator.url, (method) => method === "POST")
    try {
      const caracal = client({ coordinator: new CoordinatorClient({ baseUrl: proxy.url, retry: { baseDelayMs: 10 } }) })
      const agent = await caracal.startSession({ metadata: { run: "idem" } })
      const keys = proxy.seen.filter((r) => r.method === "POST").map((r) => r.headers["idempotency-key"])
      expect(keys).toHaveLength(2)
      expect(keys[0]).toBe(keys[1])
      expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/)
      const mine = (await caracal.coordinator.list(z.zoneId, { limit: 500 }, { token: subjectToken })).items
        .filter((s) => (s.metadata as { run?: string }).run === "idem")
      expect(mine.map((s) => s.id)).toEqual([agent.id])
      await agent.end()
      // a second logical spawn has a key of its own
      await caracal.spawn(() => undefined)
      const later = proxy.seen.filter((r) => r.method === "POST").map((r) => r.headers["idempotency-key"])
      expect(later[2]).not.toBe(keys[0])
    } finally {
      await proxy.close()
    }
  })

  it("an exchange is never resent: a lost answer is a CaracalError `unreachable`, after one request", async () => {
    const proxy = await dropFirstAnswer(z.h.sts.url, () => true)
    try {
      const caracal = client({ stsUrl: proxy.url })
      await expect(caracal.exchange("api")).rejects.toMatchObject({ code: "unreachable", status: 0, service: "sts" })
      expect(proxy.seen).toHaveLength(1)
      // the next one goes through
      expect((await caracal.exchange("api")).resources).toEqual(["api"])
    } finally {
      await proxy.close()
    }
  })
})

describe("mandates", () => {
  it("exchange: a per-call mandate for the resource, bound to the current session", async () => {
    const caracal = client()
    await caracal.spawn(async (agent) => {
      const m = await caracal.exchange("api", { scope: "read" })
      expect(m).toMatchObject({ scope: "read", resources: ["api"] })
      expect(claims(m.accessToken)).toMatchObject({ use: "per_call", aud: "api", agent_session_id: agent.id, client_id: z.app.id, zone_id: z.zoneId })
    })
    // outside any agent: the application alone
    const bare = await caracal.exchange("reports")
    expect(claims(bare.accessToken).agent_session_id).toBeUndefined()
  })

  it("refusals keep the sts's code and reason: an ended session, a denying policy, an unknown resource", async () => {
    const caracal = client()
    const agent = await caracal.startSession()
    await agent.end()
    await expect(agent.exchange("api")).rejects.toMatchObject({ service: "sts", status: 403, code: "access_denied", reason: "session_terminated" })
    await expect(caracal.exchange("nowhere")).rejects.toMatchObject({ service: "sts", status: 400, code: "invalid_target" })
  })

  it("delegate: a child receives a narrower scope and its exchanges carry the edge", async () => {
    const caracal = client()
    await caracal.spawn(async (root) => {
      const child = await caracal.startSession()
      const edge = await root.delegate({ to: child, scopes: ["read"], resources: ["api"], ttlSeconds: 60 })
      expect(edge).toMatchObject({ source_session_id: root.id, target_session_id: child.id, scopes: ["read"], status: "active" })
      await caracal.asDelegate(edge, async (delegate) => {
        expect(caracal.current()?.delegationEdgeId).toBe(edge.id)
        const m = await caracal.exchange("api")
        expect(m.scope).toBe("read")
        expect(claims(m.accessToken)).toMatchObject({ delegation_edge_id: edge.id, agent_session_id: delegate.id })
        await expect(caracal.exchange("api", { scope: "write" })).rejects.toMatchObject({ code: "invalid_scope" })
        await expect(caracal.exchange("reports")).rejects.toBeInstanceOf(CaracalError)
      })
      const traversed = await caracal.coordinator.traverse(z.zoneId, edge.id, { token: subjectToken })
      expect(traversed.map((d) => d.id)).toEqual([edge.id])
      await caracal.coordinator.revokeDelegation(z.zoneId, edge.id, undefined, { token: subjectToken })
      await expect(caracal.asDelegate(edge, () => caracal.exchange("api"))).rejects.toMatchObject({ code: "access_denied", reason: "delegation_revoked" })
    })
  })
})

describe("governed fetch", () => {
  it("a URL under a prefix goes to the gateway with the resource, a fresh per-call mandate, traceparent and baggage", async () => {
    const caracal = client()
    gateway.requests.length = 0
    let agentId = ""
    let traceId = ""
    await caracal.spawn(async (agent) => {
      agentId = agent.id
      traceId = agent.traceId
      const res = await caracal.fetch("http://upstream.test/v1/items?q=1", {
        method: "POST",
        headers: { "content-type": "text/plain", baggage: "tenant=acme" },
        body: "hello"
      })
      expect(res.status).toBe(200)
      // the longest prefix wins
      await caracal.fetch("http://upstream.test/reports/7")
      // a caller's traceparent is continued; a Request's method and streamed body move with it
      await caracal.fetch(new Request("http://upstream.test/x", {
        method: "PUT",
        body: "streamed",
        headers: { traceparent: `00-${"a".repeat(32)}-${"b".repeat(16)}-01` }
      }))
    })
    const [first, second, third] = gateway.requests
    expect(first).toMatchObject({ method: "POST", path: "/v1/items?q=1", body: "hello" })
    expect(first!.headers["x-caracal-resource"]).toBe("api")
    expect(first!.headers["content-type"]).toBe("text/plain")
    const mandate = String(first!.headers.authorization).replace(/^Bearer /, "")
    expect(claims(mandate)).toMatchObject({ use: "per_call", aud: "api", agent_session_id: agentId })
    expect(first!.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`))
    expect(first!.headers.baggage).toBe(`tenant=acme,caracal.agent_session_id=${agentId}`)
    expect(second).toMatchObject({ method: "GET", path: "/7" })
    expect(second!.headers["x-caracal-resource"]).toBe("reports")
    const secondMandate = String(second!.headers.authorization).replace(/^Bearer /, "")
    expect(claims(secondMandate).jti).not.toBe(claims(mandate).jti)
    expect(third!.headers.traceparent).toMatch(new RegExp(`^00-${"a".repeat(32)}-`))
    expect(third).toMatchObject({ method: "PUT", path: "/x", body: "streamed" })
  })

  it("other URLs pass untouched; a pre-minted mandate is used as given", async () => {
    const caracal = client()
    gateway.requests.length = 0
    await caracal.fetch(`${upstream.url}/direct`, { headers: { authorization: "Bearer mine" } })
    expect(upstream.requests.at(-1)!.headers).toMatchObject({ authorization: "Bearer mine" })
    expect(upstream.requests.at(-1)!.headers["x-caracal-resource"]).toBeUndefined()
    expect(gateway.requests).toHaveLength(0)
    // a prefix matches at a path boundary only
    await expect(caracal.fetch("http://upstream.testing/x")).rejects.toThrow()
    expect(gateway.requests).toHaveLength(0)
    await caracal.fetch("http://upstream.test/pre", undefined, { mandate: "pre-minted" })
    expect(gateway.requests[0]!.headers.authorization).toBe("Bearer pre-minted")
  })

  it("a refused exchange is thrown and nothing reaches the gateway", async () => {
    const caracal = client({ resources: [{ resourceId: "nowhere", upstreamPrefix: "http://upstream.test" }] })
    gateway.requests.length = 0
    await expect(caracal.fetch("http://upstream.test/x")).rejects.toMatchObject({ code: "invalid_target" })
    expect(gateway.requests).toHaveLength(0)
  })
})

describe("configuration", () => {
  it("fromEnv reads every variable; a missing or malformed one is a CaracalConfigError naming it", async () => {
    const env = {
      CARACAL_COORDINATOR_URL: z.coordinator.url,
      CARACAL_ZONE_ID: z.zoneId,
      CARACAL_APPLICATION_ID: z.app.id,
      CARACAL_SUBJECT_TOKEN: subjectToken,
      CARACAL_GATEWAY_URL: `${gateway.url}/`,
      CARACAL_STS_URL: z.h.sts.url,
      CARACAL_RESOURCES: "api=http://upstream.test, reports=http://upstream.test/reports"
    }
    const caracal = Caracal.fromEnv(env)
    expect(caracal.resources).toEqual([
      { resourceId: "api", upstreamPrefix: "http://upstream.test" },
      { resourceId: "reports", upstreamPrefix: "http://upstream.test/reports" }
    ])
    expect(caracal.gatewayUrl).toBe(gateway.url)
    expect(await caracal.spawn(async () => (await caracal.exchange("api")).scope)).toBe("read write")
    expect(Caracal.fromEnv({ ...env, CARACAL_COORDINATOR_URL: undefined }).coordinator.baseUrl).toBe("http://localhost:4000")
    for (const [k, v] of [["CARACAL_ZONE_ID", undefined], ["CARACAL_SUBJECT_TOKEN", " "], ["CARACAL_RESOURCES", "api"]] as const) {
      const e = (() => {
        try {
          Caracal.fromEnv({ ...env, [k]: v })
        } catch (x) {
          return x
        }
      })()
      expect(e).toBeInstanceOf(CaracalConfigError)
      expect(e).toMatchObject({ variable: k, code: "invalid_config" })
    }
    expect(() => client({ defaultKind: "forever" as never })).toThrow(CaracalConfigError)
    // without CARACAL_STS_URL the token endpoint is the subject token's issuer (the sts)
    expect(await Caracal.fromEnv({ ...env, CARACAL_STS_URL: undefined }).exchange("api").then((m) => m.resources)).toEqual(["api"])
  })
})

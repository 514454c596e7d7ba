// The SDK through the real gateway (sts, api, coordinator and gateway processes, an
// upstream on loopback): a governed fetch reaches the upstream with the injected credential
// and the trace headers, as an agent and as a delegate with a narrower scope; a revoked
// edge and an ended session stop the next call; a replayed pre-minted mandate is refused.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Caracal, CaracalError } from "../../sdk/src/index.ts"
import { type GatewayHarness, sdkFor, startGatewayStack } from "../fixtures/gateway.ts"

let g: GatewayHarness
let caracal: Caracal
const PREFIX = "http://upstream.example"

const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as Record<string, any>

beforeAll(async () => {
  g = await startGatewayStack("sdk_gw")
  caracal = await sdkFor(g, [{ resourceId: "api", upstreamPrefix: PREFIX }, { resourceId: "plain", upstreamPrefix: `${PREFIX}/plain` }])
}, 180_000)
afterAll(async () => {
  await g?.close()
})

describe("governed fetch through the gateway", () => {
  it("reaches the upstream with the injected credential, the agent's trace and baggage", async () => {
    const result = await caracal.spawn(async (agent) => {
      const res = await caracal.fetch(`${PREFIX}/items?q=1`, { method: "POST", body: "payload", headers: { "content-type": "text/plain" } })
      return { status: res.status, body: await res.json(), agent }
    })
    expect(result.status).toBe(200)
    expect(result.body).toMatchObject({ ok: true, path: "/base/items?q=1" })
    const seen = g.upstream.seen.at(-1)!
    expect(seen).toMatchObject({ method: "POST", url: "/base/items?q=1", body: "payload" })
    expect(seen.headers["x-upstream-key"]).toBe(`Key ${g.secret}`)
    expect(seen.headers.authorization).toBeUndefined()
    expect(seen.headers.traceparent).toMatch(new RegExp(`^00-${result.agent.traceId}-[0-9a-f]{16}-01$`))
    expect(seen.headers.baggage).toBe(`caracal.agent_session_id=${result.agent.id}`)
    // the longer prefix routes to the other resource (no prefix configured there)
    const plain = await caracal.fetch(`${PREFIX}/plain/x`)
    expect(plain.status).toBe(200)
    expect(g.upstream.seen.at(-1)!.url).toBe("/x")
  })

  it("a delegate calls with the edge's narrower scope; once the edge is revoked its next call is refused", async () => {
    await caracal.spawn(async (root) => {
      const child = await caracal.startSession()
      const edge = await root.delegate({ to: child, scopes: ["read"], resources: ["api"], ttlSeconds: 120 })
      await caracal.asDelegate(edge, async () => {
        const m = await caracal.exchange("api")
        expect(claims(m.accessToken)).toMatchObject({ scope: "read", delegation_edge_id: edge.id, agent_session_id: child.id })
        expect((await caracal.fetch(`${PREFIX}/reports`)).status).toBe(200)
      })
      await caracal.coordinator.revokeDelegation(g.zone, edge.id, undefined, { token: caracal.subjectToken })
      const refused = await caracal.asDelegate(edge, () => caracal.fetch(`${PREFIX}/reports`)).catch((e: unknown) => e)
      expect(refused).toBeInstanceOf(CaracalError)
      expect(refused).toMatchObject({ service: "sts", code: "access_denied", reason: "delegation_revoked" })
    })
  })

  it("a replayed pre-minted mandate is refused by the gateway; after the session ends its next call is refused", async () => {
    const agent = await caracal.startSession()
    const minted = await agent.exchange("api")
    const first = await agent.fetch(`${PREFIX}/once`, undefined, { mandate: minted.accessToken })
    expect(first.status).toBe(200)
    const again = await agent.fetch(`${PREFIX}/once`, undefined, { mandate: minted.accessToken })
    expect(again.status).toBe(401)
    expect(await again.json()).toMatchObject({ error: "replay_detected" })
    expect(g.upstream.seen.filter((s) => s.url === "/base/once")).toHaveLength(1)
    await agent.end("done")
    await expect(agent.fetch(`${PREFIX}/after`)).rejects.toMatchObject({ code: "access_denied", reason: "session_terminated" })
    expect(g.upstream.seen.some((s) => s.url === "/base/after")).toBe(false)
  })
})

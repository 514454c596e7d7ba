// Revocation reaches every gateway replica: terminating an agent session through the
// coordinator cuts a streaming response in flight on one replica and refuses the next call
// on the other; a revoked delegation edge and a deleted binding are refused too.
import http from "node:http"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type GatewayHarness, startGatewayStack } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"

let g: GatewayHarness

beforeAll(async () => {
  g = await startGatewayStack("gw_revoke", { replicas: 2 })
  // an endless event stream: one event every 20 ms until the connection goes
  g.upstream.route("/events", (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
    const timer = setInterval(() => res.write(`data: ${Date.now()}\n\n`), 20)
    res.on("close", () => clearInterval(timer))
  })
}, 180_000)
afterAll(async () => {
  await g?.close()
})

const spawn = async (lifecycle: string) => {
  const r = await g.coord("POST", `/zones/${g.zone}/agents`, lifecycle, { application_id: g.app.id })
  expect(r.status, r.text).toBe(201)
  return r.body.id as string
}

/** Opens a streaming call through `gateway`; resolves once the first event arrived. */
const openStream = (gateway: string, mandate: string) =>
  new Promise<{ events: () => number; ended: Promise<number> }>((resolve, reject) => {
    let events = 0
    const req = http.get(`${gateway}/events`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain" } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`stream refused: ${res.statusCode}`))
      const ended = new Promise<number>((done) => {
        res.on("data", (chunk: Buffer) => {
          events += chunk.toString().split("\n\n").length - 1
          if (events === 1) resolve({ events: () => events, ended })
        })
        // cut by the gateway: the response is aborted (or ends) without the upstream ending it
        res.on("close", () => done(Date.now()))
        res.on("error", () => done(Date.now()))
      })
    })
    req.on("error", () => {})
  })

let replaced: string | undefined
/** The replicas' URLs: the second is replaced by a fresh one in the first test. */
const urls = () => [g.gateways[0]!.url, replaced ?? g.gateways[1]!.url]
const live = () => [0, 1]
/** The index of the second replica for g.call: the replacement once there is one. */
const second = () => (replaced === undefined ? 1 : 2)
/** How many revocations of `kind` replica `i` holds (its /ready details). */
const revoked = async (i: number, kind: string): Promise<number> => {
  const r = await fetch(`${urls()[i]}/ready`)
  const body = (await r.json()) as { details?: { revocations?: Record<string, number> } }
  return body.details?.revocations?.[kind] ?? 0
}
const untilRevoked = async (kind: string, atLeast: number) => {
  for (const i of live()) await until(async () => (await revoked(i, kind)) >= atLeast, 20_000, `replica ${i} holds ${atLeast} ${kind} revocations`)
}

describe("revocation", () => {
  it("terminating the session cuts the stream in flight on one replica and refuses the next call on the other", async () => {
    const lifecycle = await g.ambient()
    const session = await spawn(lifecycle)
    const streaming = await g.perCall("plain", { session })
    const next = await g.perCall("plain", { session })
    const later = await g.perCall("plain", { session })
    const stream = await openStream(g.gateways[0]!.url, streaming)
    const before = stream.events()
    const revokedAt = Date.now()
    expect((await g.coord("DELETE", `/zones/${g.zone}/agents/${session}`, lifecycle)).status).toBe(200)
    const cutAt = await Promise.race([stream.ended, new Promise<number>((_, reject) => setTimeout(() => reject(new Error("stream not cut")), 20_000))])
    expect(cutAt - revokedAt).toBeLessThan(20_000)
    expect(stream.events()).toBeGreaterThanOrEqual(before)
    await untilRevoked("session", 1)
    const refused = await g.call("/after", { mandate: next, resource: "plain", gateway: 1 })
    expect(refused.status, refused.text).toBe(403)
    expect(refused.body.error).toBe("forbidden")
    // a replica killed and replaced after the revocation learns it from the log before it is ready
    await g.gateways[1]!.stop("SIGKILL")
    const fresh = await g.startGateway()
    replaced = fresh.url
    const late = await fetch(`${fresh.url}/after`, { headers: { authorization: `Bearer ${later}`, "x-caracal-resource": "plain" } })
    expect(late.status).toBe(403)
    expect(g.upstream.seen.filter((s) => s.url === "/after")).toHaveLength(0)
  })

  it("a revoked delegation edge refuses the mandates exercised through it", async () => {
    const lifecycle = await g.ambient({ scope: "agent:lifecycle delegation:grant" })
    const source = await spawn(lifecycle)
    const target = await spawn(lifecycle)
    const edge = await g.coord("POST", `/zones/${g.zone}/delegations`, lifecycle, {
      issuer_application_id: g.app.id,
      receiver_application_id: g.app.id,
      source_session_id: source,
      target_session_id: target,
      scopes: ["read"],
      ttl_seconds: 600
    })
    expect(edge.status, edge.text).toBe(201)
    const viaEdge = () => g.perCall("plain", { extra: { delegation_edge_id: edge.body.id, agent_session_id: target } })
    const first = await viaEdge()
    const secondMandate = await viaEdge()
    expect((await g.call("/edge", { mandate: first, resource: "plain" })).status).toBe(200)
    expect((await g.coord("POST", `/zones/${g.zone}/delegations/${edge.body.id}/revoke`, lifecycle)).status).toBe(200)
    await untilRevoked("edge", 1)
    const refused = await g.call("/edge", { mandate: secondMandate, resource: "plain", gateway: second() })
    expect(refused.status, refused.text).toBe(403)
    expect(g.upstream.seen.filter((s) => s.url === "/edge")).toHaveLength(1)
  })

  it("a deleted binding refuses at once", async () => {
    const resource = (await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "temp", scopes: ["read"], upstream_url: g.upstream.url })).id
    const binding = (await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: resource, application_id: g.app.id })).id
    const early = await g.perCall("temp")
    const late = await g.perCall("temp")
    expect((await g.call("/temp", { mandate: early, resource: "temp" })).status).toBe(200)
    expect((await g.api.call("DELETE", `/v1/zones/${g.zone}/bindings/${binding}`)).status).toBe(200)
    await untilRevoked("binding", 1)
    const refused = await g.call("/temp", { mandate: late, resource: "temp", gateway: second() })
    expect(refused.status, refused.text).toBe(403)
    expect(g.upstream.seen.filter((s) => s.url === "/temp")).toHaveLength(1)
  })
})

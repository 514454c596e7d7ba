// The gateway's bindings projection: a replica started while the log holds 10,000 bindings
// (among unrelated events) reports ready only once it has every one of them; a binding
// created afterwards arrives through the stream; and the periodic reload repairs what no
// stream delivered (an event written to the log only).
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type GatewayHarness, startGatewayStack } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"
import { type SeedEvent, seedLog } from "../fixtures/log-seed.ts"

const SEEDED = 10_000
const NOISE = 50_000
let g: GatewayHarness
let base = 0

const id = (kind: string, i: number) => `${kind}_seed_${String(i).padStart(5, "0")}`

function* seeded(zone: string, app: string, upstream: string): Generator<SeedEvent> {
  for (let i = 0; i < SEEDED; i++) {
    yield {
      zoneId: zone,
      aggregateType: "resource",
      aggregateId: id("res", i),
      sequence: 1,
      type: "ResourceCreated",
      data: { identifier: `r${i}`, name: "", scopes: ["read"], upstreamUrl: upstream, prefix: "", credentialProviderId: null, requiresGrant: false, metadata: {} }
    }
    yield {
      zoneId: zone,
      aggregateType: "binding",
      aggregateId: id("bnd", i),
      sequence: 1,
      type: "BindingCreated",
      data: { resourceId: id("res", i), applicationId: app, credentialId: null }
    }
    // other services' events in between: read past, never decoded
    for (let n = 0; n < NOISE / SEEDED; n++) {
      yield { zoneId: zone, aggregateType: "noise", aggregateId: `noise_${i}_${n}`, sequence: 1, type: "NoiseRecorded", data: { n } }
    }
  }
}

const details = async (url: string) => {
  const r = await fetch(`${url}/ready`)
  const body = (await r.json()) as { details?: { bindings?: { bindings: number } } }
  return { status: r.status, bindings: body.details?.bindings?.bindings ?? 0 }
}

beforeAll(async () => {
  g = await startGatewayStack("gw_bindings")
  base = (await details(g.gateways[0]!.url)).bindings
  await seedLog(g.api.dbUrl, g.api.env.STREAMS_HMAC_KEY, seeded(g.zone, g.app.id, g.upstream.url))
}, 180_000)
afterAll(async () => {
  await g?.close()
})

describe("the bindings projection", () => {
  it("a replica started with 10,000 bindings in the log is ready only once it has them all", async () => {
    const started = Date.now()
    const gw = await g.startGateway({ BINDINGS_RELOAD_MS: "1000" })
    // startGateway waited for /ready: from the first 200 on, every binding is there
    const readyMs = Date.now() - started
    const seen = await details(gw.url)
    expect(seen.status).toBe(200)
    expect(seen.bindings).toBe(base + SEEDED)
    console.log(`gateway ready with ${SEEDED} bindings among ${NOISE} unrelated events in ${readyMs} ms`)
    const r = await fetch(`${gw.url}/x`, { headers: { authorization: `Bearer ${await g.perCall(`r${SEEDED - 1}`)}`, "x-caracal-resource": `r${SEEDED - 1}` } })
    expect(r.status).toBe(200)
  })

  it("while catching up it is not ready, and it never reports ready with fewer bindings", async () => {
    const { startService } = await import("../../core/testing/index.ts")
    const gw = await startService("gateway", { ...g.gatewayEnv, PORT: "" })
    try {
      const answers: Array<{ status: number; bindings: number }> = []
      await until(async () => {
        const d = await details(gw.url).catch(() => ({ status: 0, bindings: 0 }))
        answers.push(d)
        return d.status === 200
      }, 60_000, "ready")
      for (const a of answers) if (a.status === 200) expect(a.bindings).toBe(base + SEEDED)
    } finally {
      await gw.stop()
    }
  })

  it("a binding created afterwards arrives through the stream and routes", async () => {
    const gw = g.gateways[0]!
    const before = (await details(gw.url)).bindings
    const created = Date.now()
    const resource = await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "later", scopes: ["read"], upstream_url: g.upstream.url })
    await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: resource.id, application_id: g.app.id })
    await until(async () => (await details(gw.url)).bindings === before + 1, 30_000, "the new binding projected")
    console.log(`binding created → projected by the gateway in ${Date.now() - created} ms`)
    expect((await g.call("/later", { mandate: await g.perCall("later"), resource: "later" })).status).toBe(200)
  })

  it("the periodic reload applies what no stream delivered", async () => {
    const gw = await g.startGateway({ BINDINGS_RELOAD_MS: "1000" })
    const mandate = await g.perCall("r5")
    const before = (await details(gw.url)).bindings
    // the log only: no outbox row, so no stream entry will ever carry it
    await seedLog(g.api.dbUrl, g.api.env.STREAMS_HMAC_KEY, [{
      zoneId: g.zone,
      aggregateType: "binding",
      aggregateId: id("bnd", 5),
      sequence: 2,
      type: "BindingDeleted",
      data: { reason: "removed behind the streams' back" }
    }])
    await until(async () => (await details(gw.url)).bindings === before - 1, 30_000, "the reload applied the deletion")
    const r = await fetch(`${gw.url}/x`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "r5" } })
    expect(r.status).toBe(403)
  })
})

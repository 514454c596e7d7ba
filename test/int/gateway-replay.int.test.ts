// A per-call mandate is single-use, across gateway replicas: the second use is 401
// replay_detected (and audited); 50 concurrent uses through two replicas reach the upstream
// exactly once; with the replay store unreachable every call is refused (fail closed).
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { spareRedisServer } from "../../core/testing/index.ts"
import { type GatewayHarness, startGatewayStack } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"

let g: GatewayHarness

beforeAll(async () => {
  g = await startGatewayStack("gw_replay", { replicas: 2 })
}, 180_000)
afterAll(async () => {
  await g?.close()
})

const auditRecords = async () =>
  (await g.api.redis.xrange(g.api.keys.stream("audit"), "-", "+")).map(([, f]) => JSON.parse(f[f.indexOf("e") + 1]!) as Record<string, any>)
const jtiOf = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8")).jti as string

describe("replay", () => {
  it("the same mandate twice: the second is 401 replay_detected, on the same replica and on the other", async () => {
    const mandate = await g.perCall("plain")
    expect((await g.call("/once", { mandate, resource: "plain" })).status).toBe(200)
    const again = await g.call("/once", { mandate, resource: "plain" })
    expect(again.status).toBe(401)
    expect(again.body.error).toBe("replay_detected")
    const elsewhere = await g.call("/once", { mandate, resource: "plain", gateway: 1 })
    expect(elsewhere.status).toBe(401)
    expect(elsewhere.body.error).toBe("replay_detected")
    expect(g.upstream.seen.filter((s) => s.url === "/once")).toHaveLength(1)
    // both refusals are on the audit stream, with the mandate's jti and the reason
    const jti = jtiOf(mandate)
    await until(async () => (await auditRecords()).filter((r) => r.jti === jti && r.reason === "replay_detected").length === 2, 10_000, "two audited replays")
    // (the sts's record of the exchange carries the same jti: only the gateway's are counted)
    const records = (await auditRecords()).filter((r) => r.jti === jti && r.source === "gateway")
    expect(records.map((r) => r.decision).sort()).toEqual(["allow", "deny", "deny"])
    expect(records.every((r) => r.source === "gateway" && r.resource === "plain" && r.client_id === g.app.id)).toBe(true)
  })

  it("50 concurrent uses of one mandate across two replicas: exactly one reaches the upstream", async () => {
    const mandate = await g.perCall("plain")
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) =>
      g.call("/race", { mandate, resource: "plain", gateway: i % 2 })))
    expect(results.filter((r) => r.status === 200)).toHaveLength(1)
    expect(results.filter((r) => r.status === 401 && r.body.error === "replay_detected")).toHaveLength(49)
    expect(g.upstream.seen.filter((s) => s.url === "/race")).toHaveLength(1)
  })

  it("the replay store unreachable: refused with 503, nothing reaches the upstream", async () => {
    const spare = await spareRedisServer([])
    let stopped = false
    try {
      // its replay claims and budgets live on the spare Redis; the audit stream stays where it was
      const gw = await g.startGateway({ REDIS_URL: spare.url, AUDIT_STREAM_URL: g.api.env.REDIS_URL! })
      const base = gw.url
      const call = async (mandate: string) =>
        (await fetch(`${base}/closed`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain" } })).status
      expect(await call(await g.perCall("plain")), gw.stdout() + gw.stderr()).toBe(200)
      await spare.stop()
      stopped = true
      const before = g.upstream.seen.length
      expect(await call(await g.perCall("plain"))).toBe(503)
      expect(g.upstream.seen.length).toBe(before)
    } finally {
      if (!stopped) await spare.stop()
    }
  }, 120_000)

  it("the audit stream unreachable: refused with 503 before the upstream is called", async () => {
    const spare = await spareRedisServer([])
    let stopped = false
    try {
      // the audit stream on a Redis of its own: the record is appended apart from the jti claim
      const gw = await g.startGateway({ AUDIT_STREAM_URL: spare.url })
      const call = async (mandate: string) =>
        (await fetch(`${gw.url}/audited`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain" } })).status
      expect(await call(await g.perCall("plain")), gw.stdout() + gw.stderr()).toBe(200)
      await spare.stop()
      stopped = true
      const before = g.upstream.seen.length
      const mandate = await g.perCall("plain")
      expect(await call(mandate)).toBe(503)
      expect(g.upstream.seen.length).toBe(before)
    } finally {
      if (!stopped) await spare.stop()
    }
  }, 120_000)
})

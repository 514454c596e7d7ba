// Every service killed with SIGKILL in turn — sts, api, coordinator, gateway, audit — while a
// steady load of governed calls (and of api writes) runs, each restarted on its port. After:
// every governed call that was answered 200 has its gateway record chained by the audit
// service, every api write that was answered 201 is there, and the zone's audit chain verifies.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type RunningService, runScript, startService } from "../../core/testing/index.ts"
import { checkpointSigner } from "../../services/audit/checkpoint.ts"
import { type GatewayHarness, startGatewayStack, untilReady } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"

let g: GatewayHarness
const restarted: Array<RunningService> = []

beforeAll(async () => {
  g = await startGatewayStack("e2e_kill9", { audit: true })
}, 180_000)
afterAll(async () => {
  await Promise.all(restarted.map((r) => r.stop()))
  await g?.close()
})

describe("kill -9 of each service under a steady load", () => {
  it("nothing acknowledged is lost and the audit chain verifies", async () => {
    const answered: Array<string> = []
    const created: Array<string> = []
    let failures = 0
    let running = true
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))
    const governed = async () => {
      while (running) {
        try {
          const mandate = await g.perCall("plain")
          const r = await g.call("/steady", { mandate, resource: "plain" })
          if (r.status === 200) answered.push(r.headers.get("x-request-id")!)
          else failures++
        } catch {
          failures++
          await pause(100)
        }
      }
    }
    const writes = async () => {
      for (let i = 0; running; i++) {
        const r = await g.api.call("POST", `/v1/zones/${g.zone}/resources`, { body: { identifier: `k9-${i}`, scopes: ["read"] } }).catch(() => undefined)
        if (r?.status === 201) created.push(r.body.id)
        else failures++
        await pause(100)
      }
    }
    const load = [governed(), governed(), writes()]

    const services: Array<[string, RunningService, Record<string, string>]> = [
      ["sts", g.api.sts, g.api.stsEnv],
      ["api", g.api.replicas[0]!, g.api.env],
      ["coordinator", g.coordinator, g.coordinatorEnv],
      ["gateway", g.gateways[0]!, g.gatewayEnv],
      ["audit", g.audit!, g.auditEnv!]
    ]
    await pause(1500)
    for (const [name, running, env] of services) {
      const before = answered.length
      await running.stop("SIGKILL")
      await pause(500)
      const again = await startService(name, { ...env, PORT: String(running.port) })
      restarted.push(again)
      await untilReady(again.url, 60_000)
      // the load goes on, and goes through again, before the next service falls
      await until(() => answered.length > before + 5, 60_000, `governed calls answered again after ${name} came back`)
    }
    running = false
    await Promise.all(load)
    console.log(`kill -9 × 5 under load: ${answered.length} governed calls answered, ${created.length} writes acknowledged, ${failures} refused or failed during the outages`)
    expect(answered.length).toBeGreaterThan(25)
    expect(created.length).toBeGreaterThan(5)

    // every answered call's gateway record reached the chain (written before the upstream call)
    await until(async () => {
      const rows = await g.api.rows<{ n: string }>(
        "select count(distinct request_id) as n from audit_records where kind = 'proxy' and request_id = any($1)", [answered])
      return Number(rows[0]!.n) === answered.length
    }, 90_000, "every answered governed call chained")
    // every acknowledged write is there
    for (const id of created) expect((await g.api.call("GET", `/v1/zones/${g.zone}/resources/${id}`)).status).toBe(200)
    await until(async () => {
      const rows = await g.api.rows<{ n: string }>("select count(*) as n from audit_records where kind = 'ResourceCreated' and zone = $1", [g.zone])
      return Number(rows[0]!.n) >= created.length
    }, 90_000, "every acknowledged write chained")

    const verified = await runScript("cli/main.ts", ["audit", "verify", "--zone", g.zone], {
      DATABASE_URL: g.api.dbUrl,
      REDIS_URL: g.api.env.REDIS_URL!,
      AUDIT_HMAC_KEY: g.auditEnv!.AUDIT_HMAC_KEY!,
      AUDIT_CHECKPOINT_PUBLIC_KEY: checkpointSigner(Buffer.from(g.auditEnv!.AUDIT_CHECKPOINT_KEY!, "hex")).publicKeyHex
    }, 60_000)
    expect(verified.code, verified.stdout + verified.stderr).toBe(0)
  }, 300_000)
})

import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type AuditHarness, startAudit } from "../fixtures/audit.ts"
import { freePort, runToExit, stackEnv } from "../../core/testing/index.ts"
import { until } from "../fixtures/harness.ts"

describe("audit ingest", () => {
  let h: AuditHarness
  beforeAll(async () => {
    h = await startAudit("auditingest")
  }, 120_000)
  afterAll(() => h?.close())

  it("chains a known zone's records in its chain and an unknown zone's in _unverified", async () => {
    const zone = await h.createZone()
    for (let i = 0; i < 20; i++) await h.record({ zone_id: zone })
    await h.record({ zone_id: "forged-zone" })
    await until(async () => (await h.count(zone)) === 20 && (await h.count("_unverified")) === 1, 60_000, "records chained")
    const report = await h.verify(zone)
    assert.isTrue(report.ok, JSON.stringify(report.firstBad))
    assert.strictEqual(report.records, 20)
    const chains = await h.rows<{ zone: string }>("select zone from audit_chain_heads order by zone")
    assert.notInclude(chains.map((c) => c.zone), "forged-zone")
  }, 90_000)

  it("/ready reports the consumer, /metrics its ingest, lag, DLQ and self-verification", async () => {
    const ready = await fetch(`${h.replicas[0]!.url}/ready`)
    assert.strictEqual(ready.status, 200)
    assert.deepInclude(await ready.json(), { checks: { postgres: "ok", redis: "ok", consumer: "ok" } })
    await until(async () => {
      const text = await (await fetch(`${h.replicas[0]!.url}/metrics`)).text()
      return ["caracal_audit_records_total", "caracal_audit_consumer_lag", "caracal_audit_oldest_pending_seconds", "caracal_audit_dlq_entries",
        "caracal_audit_verifications_total"].every((m) => text.includes(m)) && /caracal_audit_verifications_total\{[^}]*result="ok"/.test(text)
    }, 90_000, "audit metrics exposed")
  }, 120_000)

  it("refuses to start in production without AUDIT_CHECKPOINT_KEY, naming it", async () => {
    const { AUDIT_CHECKPOINT_KEY: _, ...env } = h.env
    const r = await runToExit("audit", { ...env, CARACAL_MODE: "production", REDIS_URL: stackEnv().REDIS_URL, PORT: String(await freePort()) }, 60_000)
    assert.notStrictEqual(r.code, 0)
    assert.match(r.stderr, /AUDIT_CHECKPOINT_KEY: is required in production/)
  }, 90_000)
})

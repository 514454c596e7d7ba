import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type AuditHarness, startAudit } from "../fixtures/audit.ts"
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
})

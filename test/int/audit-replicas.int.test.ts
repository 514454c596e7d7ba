// Two audit replicas on one zone: one gap-free chain; one killed (SIGKILL) mid-ingest loses
// nothing and chains nothing twice (its pending entries are claimed by the other).
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type AuditHarness, startAudit } from "../fixtures/audit.ts"
import { until } from "../fixtures/harness.ts"

const TOTAL = 3000

describe("two audit replicas ingesting one zone", () => {
  let h: AuditHarness
  beforeAll(async () => {
    h = await startAudit("auditreplicas", {}, 2)
  }, 120_000)
  afterAll(() => h?.close())

  it("when one is killed mid-batch: one gap-free chain, nothing lost, nothing twice", async () => {
    const zone = await h.createZone()
    const stream = h.redis.keys.stream("audit")
    const victim = h.replicas[0]!
    const ids: Array<string> = []
    // the publisher runs while the test watches for the victim holding delivered, unacknowledged entries
    const publishing = (async () => {
      for (let round = 0; round < TOTAL / 100; round++) {
        ids.push(...(await Promise.all(Array.from({ length: 100 }, () => h.record({ zone_id: zone })))).map((r) => r.id))
      }
    })()
    let held = 0
    await until(async () => {
      const pending = (await h.redis.redis.xpending(stream, "audit", "-", "+", 10_000)) as Array<[string, string, number, number]>
      held = pending.filter((p) => p[1].includes(`-${victim.child.pid}-`)).length
      return held > 0
    }, 60_000, "the victim holds pending entries")
    await victim.stop("SIGKILL")
    await publishing
    await until(async () => (await h.count(zone)) >= TOTAL, 120_000, "every record chained")
    const [stats] = await h.rows<{ n: string; distinct_ids: string; max_seq: string }>(
      "select count(*) as n, count(distinct id) as distinct_ids, max(seq) as max_seq from audit_records where zone = $1", [zone])
    assert.strictEqual(Number(stats!.n), TOTAL)
    assert.strictEqual(Number(stats!.distinct_ids), TOTAL)
    assert.strictEqual(Number(stats!.max_seq), TOTAL)
    const chained = new Set((await h.rows<{ id: string }>("select id from audit_records where zone = $1", [zone])).map((r) => r.id))
    assert.isTrue(ids.every((id) => chained.has(id)), "every published record is in the chain")
    const report = await h.verify(zone)
    assert.isTrue(report.ok, JSON.stringify(report.firstBad))
    assert.strictEqual(report.lastSeq, TOTAL)
  }, 240_000)
})

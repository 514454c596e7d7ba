// Tampering with stored rows: `caracal audit verify` names the first bad record in each case.
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type AuditHarness, startAudit } from "../fixtures/audit.ts"
import { until } from "../fixtures/harness.ts"

const N = 30

describe("audit verify when rows were tampered with", () => {
  let h: AuditHarness
  const zones: Record<string, string> = {}
  beforeAll(async () => {
    h = await startAudit("audittamper")
    for (const name of ["intact", "changed", "column", "deleted", "swapped", "truncated"]) {
      zones[name] = await h.createZone()
      for (let i = 0; i < N; i++) await h.record({ zone_id: zones[name]!, decision: "allow" })
    }
    // every chain complete and covered by a checkpoint at its full size
    await until(async () => {
      const rows = await h.rows<{ n: string }>("select count(*) as n from audit_checkpoints where tree_size = $1", [N])
      return Number(rows[0]!.n) === Object.keys(zones).length
    }, 90_000, "checkpoints at full size")
    await Promise.all(h.replicas.map((r) => r.stop()))
  }, 150_000)
  afterAll(() => h?.close())

  const verify = async (zone: string) => {
    const r = await h.cli(["audit", "verify", "--zone", zone])
    return { ...r, all: r.stdout + r.stderr }
  }

  it("an intact chain verifies, with its checkpoints", async () => {
    const r = await verify(zones.intact!)
    assert.strictEqual(r.code, 0, r.all)
    assert.match(r.stdout, new RegExp(`${zones.intact}: ok, records 1\\.\\.${N}`))
  }, 60_000)

  it("when one stored row's bytes were changed: that record", async () => {
    await h.rows(`update audit_records set canonical = convert_to(replace(convert_from(canonical, 'UTF8'), '"allow"', '"deny"'), 'UTF8')
      where zone = $1 and seq = 7`, [zones.changed])
    const r = await verify(zones.changed!)
    assert.strictEqual(r.code, 1, r.all)
    assert.match(r.stdout, /FAILED at record 7 \(id [0-9a-f-]+\)/)
  }, 60_000)

  it("when only a filter column was changed: that record", async () => {
    await h.rows("update audit_records set decision = 'deny' where zone = $1 and seq = 9", [zones.column])
    const r = await verify(zones.column!)
    assert.strictEqual(r.code, 1, r.all)
    assert.match(r.stdout, /FAILED at record 9 .*decision column/)
  }, 60_000)

  it("when a middle row was deleted: the missing record", async () => {
    await h.rows("delete from audit_records where zone = $1 and seq = 12", [zones.deleted])
    const r = await verify(zones.deleted!)
    assert.strictEqual(r.code, 1, r.all)
    assert.match(r.stdout, /FAILED at record 12: record 12 is missing/)
  }, 60_000)

  it("when two rows were swapped: the first of them", async () => {
    // through a free seq: the primary key is checked per statement
    for (const [from, to] of [[5, -5], [6, 5], [-5, 6]]) {
      await h.rows("update audit_records set seq = $3 where zone = $1 and seq = $2", [zones.swapped, from, to])
    }
    const r = await verify(zones.swapped!)
    assert.strictEqual(r.code, 1, r.all)
    assert.match(r.stdout, /FAILED at record 5 /)
  }, 60_000)

  it("when the last rows, covered by a checkpoint, were deleted: the first missing one", async () => {
    await h.rows("delete from audit_records where zone = $1 and seq > $2", [zones.truncated, N - 3])
    const r = await verify(zones.truncated!)
    assert.strictEqual(r.code, 1, r.all)
    assert.match(r.stdout, new RegExp(`FAILED at record ${N - 2}: record ${N - 2} is missing: the checkpoint .* covers ${N} records`))
  }, 60_000)
})

// Faults on the way in: Postgres away during ingest (nothing lost, nothing dead-lettered,
// all chained after), a permanently failing record (the DLQ after exactly
// AUDIT_MAX_DELIVERIES), a bad signature (DLQ + alert, never chained), a redelivery (no-op)
// and a known id with other content (tamper: DLQ + alert).
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { v7 as uuidv7 } from "uuid"
import { makeAuditLog } from "../../core/audit-log.ts"
import { signingKey } from "../../core/signing.ts"
import { stackEnv, startService } from "../../core/testing/index.ts"
import { type AuditHarness, startAudit } from "../fixtures/audit.ts"
import { until } from "../fixtures/harness.ts"
import { tcpProxy } from "../fixtures/proxy.ts"

const MAX = 3

describe("audit ingest under faults", () => {
  let h: AuditHarness
  let pg: Awaited<ReturnType<typeof tcpProxy>>
  let stream: string
  beforeAll(async () => {
    const target = new URL(stackEnv().DATABASE_URL)
    pg = await tcpProxy({ host: target.hostname, port: Number(target.port || 5432) })
    h = await startAudit("auditfaults", {}, 0)
    const viaProxy = new URL(h.db.url)
    viaProxy.port = String(pg.port)
    viaProxy.hostname = "127.0.0.1"
    stream = h.redis.keys.stream("audit")
    h.replicas.push(await startService("audit", {
      ...h.env, DATABASE_URL: viaProxy.toString(), AUDIT_MAX_DELIVERIES: String(MAX), AUDIT_READY_MAX_PENDING_S: "2"
    }))
  }, 120_000)
  afterAll(async () => {
    await h?.close()
    await pg?.down()
  })

  const deadLetters = async () =>
    ((await h.redis.redis.xrange(`${stream}:dlq`, "-", "+")) as Array<[string, Array<string>]>).map(([entry, raw]) => {
      const f: Record<string, string> = {}
      for (let i = 0; i < raw.length; i += 2) f[raw[i]!] = raw[i + 1]!
      return { ...f, entry } as Partial<Record<string, string>> & { entry: string }
    })
  const alerts = (kind: string) => h.rows<{ canonical: Buffer }>("select canonical from audit_records where zone = '_audit' and kind = $1", [kind])

  it("when Postgres is unavailable during ingest: nothing lost, nothing dead-lettered, all chained after recovery", async () => {
    const zone = await h.createZone()
    for (let i = 0; i < 10; i++) await h.record({ zone_id: zone })
    await until(async () => (await h.count(zone)) === 10, 60_000, "first records chained")
    await pg.down()
    for (let i = 0; i < 50; i++) await h.record({ zone_id: zone })
    // longer than MAX claim rounds (AUDIT_CLAIM_IDLE_MS=1000): an outage must not burn deliveries
    await new Promise((r) => setTimeout(r, (MAX + 2) * 1000))
    // meanwhile /ready says so (the oldest pending entry is older than AUDIT_READY_MAX_PENDING_S)
    await until(async () => (await fetch(`${h.replicas[0]!.url}/ready`)).status === 503, 30_000, "not ready during the outage")
    await pg.up()
    await until(async () => (await h.count(zone)) === 60, 90_000, "all chained after recovery")
    assert.deepStrictEqual(await deadLetters(), [])
    await until(async () => (await fetch(`${h.replicas[0]!.url}/ready`)).status === 200, 30_000, "ready again")
    const report = await h.verify(zone)
    assert.isTrue(report.ok, JSON.stringify(report.firstBad))
  }, 150_000)

  it("a permanently failing record goes to the DLQ after exactly AUDIT_MAX_DELIVERIES deliveries, with an alert", async () => {
    const zone = await h.createZone()
    // Postgres refuses NUL in text: this record can never be stored
    const poison = await h.record({ zone_id: zone, request_id: "bad\u0000id" })
    const good = await h.record({ zone_id: zone })
    await until(async () => (await deadLetters()).some((d) => d.id !== undefined && d.reason?.startsWith("max_deliveries")), 90_000, "poison parked")
    const letter = (await deadLetters()).find((d) => d.reason?.startsWith("max_deliveries"))!
    assert.strictEqual(letter.deliveries, String(MAX))
    assert.include(letter.fields!, poison.id)
    await until(async () => (await h.count(zone)) === 1, 30_000, "the good record chained")
    const chained = await h.rows<{ id: string }>("select id from audit_records where zone = $1", [zone])
    assert.deepStrictEqual(chained.map((r) => r.id), [good.id])
    await until(async () => (await alerts("alert.dead_letter")).length > 0, 30_000, "alert chained")
    // caracal dlq lists it with its delivery count, and re-queues it
    const list = await h.cli(["dlq", "list", "--stream", stream, "--json"])
    assert.strictEqual(list.code, 0, list.stderr)
    const listed = list.stdout.trim().split("\n").map((l) => JSON.parse(l))
    assert.isTrue(listed.some((d) => d.entryId === letter.entry && d.deliveries === String(MAX)))
    const requeued = await h.cli(["dlq", "requeue", letter.entry, "--stream", stream])
    assert.strictEqual(requeued.code, 0, requeued.stderr)
    assert.isFalse((await deadLetters()).some((d) => d.entry === letter.entry))
  }, 150_000)

  it("a bad signature is dead-lettered with its reason and an alert, never chained", async () => {
    const forger = makeAuditLog(h.redis.redis, h.redis.keys, signingKey(Buffer.alloc(32, 7)))
    const forged = await Effect.runPromise(forger.append({
      id: uuidv7(), zone_id: null, source: "sts", kind: "token_exchange", decision: "allow", reason: null, request_id: "forged", trace_id: null,
      client_id: null, agent_session_id: null, delegation_edge_id: null, resource: null, scope: null, jti: null, status: 200, latency_ms: 1
    }))
    await until(async () => (await deadLetters()).some((d) => d.reason === "unknown_key" && d.fields?.includes(forged.id)), 60_000, "forged parked")
    await until(async () => (await alerts("alert.dead_letter")).some((a) => a.canonical.toString().includes("unknown_key")), 30_000, "alert")
    assert.lengthOf(await h.rows("select 1 from audit_records where id = $1", [forged.id]), 0)
  }, 90_000)

  it("a redelivered record is a no-op; the same id with other content is a tamper alert, dead-lettered", async () => {
    const zone = await h.createZone()
    const original = await h.record({ zone_id: zone, decision: "deny", reason: "policy" })
    await until(async () => (await h.count(zone)) === 1, 60_000, "chained")
    await h.record(original) // identical: a relay or writer retry
    await h.record({ ...original, decision: "allow", reason: null }) // rewritten history
    await until(async () => (await deadLetters()).some((d) => d.reason?.startsWith("tamper") && d.fields?.includes(original.id)), 60_000, "tamper parked")
    await until(async () => (await alerts("alert.tamper")).length > 0, 30_000, "tamper alert")
    const rows = await h.rows<{ canonical: Buffer }>("select canonical from audit_records where id = $1", [original.id])
    assert.lengthOf(rows, 1)
    assert.include(rows[0]!.canonical.toString(), "\"decision\":\"deny\"")
    assert.isTrue((await h.verify(zone)).ok)
    assert.isTrue((await h.verify("_audit")).ok)
  }, 90_000)
})

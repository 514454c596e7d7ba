// Rebuild of a projection from 1,000,000 logged events with each row's MAC verified,
// beside the ceiling: reading the same rows in the same batches and doing nothing with them.
import { sql } from "kysely"
import { randomBytes, randomUUID } from "node:crypto"
import { cursorOf, LOG_START, readLog } from "../core/eventstore.ts"
import { rebuildPostgres } from "../core/projection.ts"
import { logMac, signingKey, Verifier } from "../core/signing.ts"
import { freshDatabase } from "../core/testing/index.ts"
import { balancesProjection, ledgerTable, registry } from "../test/fixtures/ledger.ts"
import { report } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 1_000_000)
const PER_ACCOUNT = 10
const BATCH = 10_000
const db = await freshDatabase("bench_rebuild")
const kdb = db.database.db
await ledgerTable("balances").execute(kdb)
const key = signingKey(randomBytes(32))
const actor = { kind: "bench", id: "b" }
const occurredAt = new Date("2026-11-29T10:00:00.000Z")

// seed: N/10 accounts, each opened then given 9 deposits, every row signed as a producer would
const seedStart = performance.now()
for (let from = 0; from < N; from += 10_000) {
  const cols = { id: [] as string[], agg: [] as string[], seq: [] as number[], type: [] as string[], data: [] as string[], mac: [] as string[] }
  for (let i = from; i < Math.min(N, from + 10_000); i++) {
    const agg = `acc-${Math.floor(i / PER_ACCOUNT)}`
    const seq = (i % PER_ACCOUNT) + 1
    const type = seq === 1 ? "AccountOpened" : "FundsDeposited"
    const data = seq === 1 ? { owner: "bench" } : { amount: 1, currency: "EUR" }
    const id = randomUUID()
    cols.id.push(id); cols.agg.push(agg); cols.seq.push(seq); cols.type.push(type); cols.data.push(JSON.stringify(data))
    cols.mac.push(logMac(key, {
      id, type, schemaVersion: seq === 1 ? 1 : 2, zoneId: "z1", aggregateType: "account", aggregateId: agg, sequence: seq,
      occurredAt: occurredAt.toISOString(), actor, correlationId: "c", causationId: null, data
    }))
  }
  await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data, mac, mac_key_id)
    select u.id, 'z1', 'account', u.agg, u.seq, u.type, case when u.seq = 1 then 1 else 2 end, ${occurredAt}, ${JSON.stringify(actor)}::jsonb, 'c', u.data::jsonb, u.mac, ${key.id}
    from unnest(${cols.id}::uuid[], ${cols.agg}::text[], ${cols.seq}::int[], ${cols.type}::text[], ${cols.data}::text[], ${cols.mac}::text[])
      as u(id, agg, seq, type, data, mac)`.execute(kdb)
}
await sql`vacuum analyze events`.execute(kdb)
process.stderr.write(`seeded ${N} events in ${((performance.now() - seedStart) / 1000).toFixed(1)} s\n`)

const readOnly = async () => {
  const start = performance.now()
  let cursor = LOG_START
  let n = 0
  for (;;) {
    const rows = await readLog(kdb, cursor, BATCH, { horizon: false })
    if (rows.length === 0) break
    n += rows.length
    cursor = cursorOf(rows[rows.length - 1]!)
  }
  if (n !== N) throw new Error(`read ${n} of ${N}`)
  return (performance.now() - start) / 1000
}

const projection = balancesProjection("balances", "balances")
const rebuild = async () => {
  const start = performance.now()
  const r = await rebuildPostgres(kdb, registry, projection, { verifier: new Verifier([key]), batchSize: BATCH })
  if (r.applied !== N) throw new Error(`applied ${r.applied} of ${N}`)
  return (performance.now() - start) / 1000
}

await readOnly() // warm the cache
const ceilingS = await readOnly()
const rebuildS = await rebuild()
if (process.env.BENCH_DEBUG) { const s = performance.now(); await rebuildPostgres(kdb, registry, projection, { batchSize: BATCH }); process.stderr.write(`unverified: ${((performance.now() - s) / 1000).toFixed(2)} s\n`) }
const check = await sql<{ n: string; total: string }>`select count(*)::text as n, sum(balance)::text as total from balances`.execute(kdb)
if (check.rows[0]!.n !== String(N / PER_ACCOUNT) || check.rows[0]!.total !== String((N / PER_ACCOUNT) * (PER_ACCOUNT - 1))) {
  throw new Error(`rebuild result is wrong: ${JSON.stringify(check.rows[0])}`)
}
report({ bench: "rebuild", metric: "events_per_s_verified", value: N / rebuildS, unit: "events/s", ceiling: N / ceilingS })
report({ bench: "rebuild", metric: "seconds_for_1M_verified", value: (rebuildS * 1_000_000) / N, unit: "s", ceiling: 10 })
await db.close()

// End to end, commit → projection: commands commit (one statement each), the relay
// publishes signed entries, a consumer group applies them to a Postgres projection in
// batches. Sustained events/s at full load beside the single-statement write ceiling
// measured in the same run, and latency (commit start → applied) at 1,000 events/s offered.
import { Effect } from "effect"
import { Redis } from "ioredis"
import { sql } from "kysely"
import { randomBytes, randomUUID } from "node:crypto"
import { execute } from "../core/command.ts"
import { makeConsumer } from "../core/consumer.ts"
import { applyDeliveredToPostgres } from "../core/projection.ts"
import { makeRelay } from "../core/relay.ts"
import { signingKey, Verifier } from "../core/signing.ts"
import { freshDatabase, stackEnv } from "../core/testing/index.ts"
import { makeKeys } from "../core/redis/keys.ts"
import { account, balancesProjection, ledgerTable, registry, balanceRows } from "../test/fixtures/ledger.ts"
import { percentile, report, throughput } from "./lib.ts"

const db = await freshDatabase("bench_e2e")
const kdb = db.database.db
await ledgerTable("balances").execute(kdb)
await ledgerTable("projected").execute(kdb)
const redis = new Redis(stackEnv().REDIS_URL)
const keys = makeKeys(`bench${randomBytes(3).toString("hex")}`)
const stream = keys.stream("account")
const key = signingKey(randomBytes(32))
const projection = balancesProjection("projected", "projected")

const started = new Map<string, number>() // event id → when its command started
const latencies: Array<number> = []
let appliedCount = 0

const relay = makeRelay({ producer: "e2e", databaseUrl: db.url, database: db.database, redis, pollMs: 250, batchSize: 256, maxAttempts: 10, signer: key })
const consumer = makeConsumer({
  redis, streams: [stream], group: "projection", registry, verifier: new Verifier([key]), deadLetterStream: keys.deadLetters,
  count: 500, blockMs: 100,
  handle: async (e) => {
    await applyDeliveredToPostgres(kdb, registry, projection, [e.envelope])
    record([e.envelope.id])
  },
  handleBatch: async (events) => {
    await applyDeliveredToPostgres(kdb, registry, projection, events.map((e) => e.envelope))
    record(events.map((e) => e.envelope.id))
  }
})
const record = (ids: ReadonlyArray<string>) => {
  const now = performance.now()
  for (const id of ids) {
    const t = started.get(id)
    if (t !== undefined) {
      latencies.push(now - t)
      started.delete(id)
    }
  }
  appliedCount += ids.length
}
const running = [relay.run(), consumer.run()]

let accounts = 0
const open = async () => {
  const id = `acc-${accounts++}`
  await command(id, { _tag: "Open", owner: "e2e" }, true)
  return id
}
const command = (id: string, c: Parameters<typeof account.decide>[0], isNew = false) => {
  const t = performance.now()
  return Effect.runPromise(execute(db.database, registry, {
    aggregate: account, id, command: c, isNew, signer: key,
    meta: { zoneId: "z1", actor: { kind: "bench", id: "b" }, now: new Date(), correlationId: randomUUID() },
    producer: "e2e", streams: () => [stream], projectRows: (s, pending) => balanceRows("balances", id, s, pending), result: () => null
  })).then((o) => { for (const e of o.events) started.set(e.id, t) })
}
const waitApplied = async (n: number, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  while (appliedCount < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
}

// 1. sustained: 16 writers as fast as they can for a fixed count; rate = applied / time to apply all
const pool = await Promise.all(Array.from({ length: 400 }, () => open()))
await waitApplied(pool.length, 30_000)
const N = Number(process.env.BENCH_N ?? 20_000)
const base = appliedCount
const t0 = performance.now()
await throughput(N, 16, (i) => command(pool[i % pool.length]!, { _tag: "Deposit", amount: 1 }))
await waitApplied(base + N, 120_000)
const sustained = (appliedCount - base) / ((performance.now() - t0) / 1000)
const ceiling = await throughput(N, 16, (i) => sql`
  with e as (insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, 'z1', 'ceiling', ${`c-${i}`}, 1, 'AccountOpened', 1, now(), '{}', 'c', '{}') returning position)
  insert into outbox (producer, stream, event_position, aggregate_key, status) select 'ceiling', 's', position, 'k', 'sent' from e`.execute(kdb))
report({ bench: "e2e", metric: "sustained_events_per_s", value: sustained, unit: "events/s", ceiling })

// 2. latency at 1,000 events/s offered, for 10 s
latencies.length = 0
const RATE = 1000
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const before = appliedCount
const tStart = performance.now()
const inflight: Array<Promise<void>> = []
for (let i = 0; i < RATE * SECONDS; i++) {
  const due = tStart + (i * 1000) / RATE
  const wait = due - performance.now()
  if (wait > 1) await new Promise((r) => setTimeout(r, wait))
  inflight.push(command(pool[i % pool.length]!, { _tag: "Deposit", amount: 1 }))
}
await Promise.all(inflight)
await waitApplied(before + RATE * SECONDS, 30_000)
const sorted = latencies.sort((a, b) => a - b)
// latency figures are printed against their targets (10 ms, 50 ms) as the ceiling
report({ bench: "e2e", metric: "p50_latency_at_1k_per_s", value: percentile(sorted, 50), unit: "ms", ceiling: 10 })
report({ bench: "e2e", metric: "p99_latency_at_1k_per_s", value: percentile(sorted, 99), unit: "ms", ceiling: 50 })

// the projection equals the inline state
const diff = await sql<{ n: string }>`select count(*)::text as n from balances b full join projected p using (account_id)
  where p.account_id is null or b.account_id is null or b.balance <> p.balance`.execute(kdb)
if (diff.rows[0]!.n !== "0") throw new Error(`projection differs from the inline state in ${diff.rows[0]!.n} rows`)

relay.stop()
consumer.stop()
await Promise.all(running)
await redis.del(stream)
redis.disconnect()
await db.close()

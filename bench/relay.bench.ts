// Relay throughput: committed outbox rows → signed stream entries → rows marked sent,
// beside the raw ceiling: the same rows claimed with a plain SELECT, their stored JSON
// XADDed with the same pipelining, and marked sent (no envelope, no signature, no ordering check).
import { Redis } from "ioredis"
import { sql } from "kysely"
import { randomBytes } from "node:crypto"
import { makeRelay } from "../core/relay.ts"
import { signingKey } from "../core/signing.ts"
import { freshDatabase, stackEnv } from "../core/testing/index.ts"
import { report } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 50_000)
const db = await freshDatabase("bench_relay")
const kdb = db.database.db
const redis = new Redis(stackEnv().REDIS_URL)
const prefix = `bench${randomBytes(3).toString("hex")}`
const streamOf = (run: string) => `${prefix}:{${run}}:events`

// N events over 1,000 aggregates, each with one outbox row
await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
  select gen_random_uuid(), 'z1', 'agent', 'ag-' || (g % 1000), g / 1000 + 1, 'AgentSpawned', 1, now(),
    '{"kind":"application","id":"app-1"}', 'c-' || g, jsonb_build_object('applicationId', 'app-1', 'kind', 'instance', 'n', g)
  from generate_series(0, ${N - 1}) g`.execute(kdb)

const reset = async (run: string) => {
  await sql`delete from outbox`.execute(kdb)
  await sql`insert into outbox (producer, stream, event_position, aggregate_key)
    select 'bench', ${streamOf(run)}, position, aggregate_type || '/' || aggregate_id from events order by position`.execute(kdb)
  await sql`vacuum analyze outbox`.execute(kdb)
}

const raw = async (batch: number) => {
  await reset("raw")
  const start = performance.now()
  for (;;) {
    const { rows } = await sql<{ id: string; stream: string; data: string }>`
      select o.id::text as id, o.stream, e.data::text as data from outbox o join events e on e.position = o.event_position
      where o.status = 'pending' order by o.id limit ${batch}`.execute(kdb)
    if (rows.length === 0) break
    const p = redis.pipeline()
    for (const r of rows) p.xadd(r.stream, "*", "e", r.data)
    await p.exec()
    await sql`update outbox set status = 'sent', sent_at = now() where id = any(${rows.map((r) => r.id)}::bigint[])`.execute(kdb)
  }
  return N / ((performance.now() - start) / 1000)
}

const ours = async (batch: number) => {
  await reset("ours")
  const relay = makeRelay({
    producer: "bench", databaseUrl: db.url, database: db.database, redis, pollMs: 1000, batchSize: batch, maxAttempts: 10,
    signer: signingKey(randomBytes(32))
  })
  const start = performance.now()
  const running = relay.run()
  while (relay.stats.published < N) await new Promise((r) => setTimeout(r, 5))
  const rate = N / ((performance.now() - start) / 1000)
  relay.stop()
  await running
  return rate
}

for (const batch of [256, 32]) {
  await raw(batch) // warm
  const ceiling = Math.max(await raw(batch), await raw(batch))
  const value = Math.max(await ours(batch), await ours(batch))
  report({ bench: "relay", metric: `events_per_s_batch${batch}`, value, unit: "events/s", ceiling })
}
for (const run of ["raw", "ours"]) await redis.del(streamOf(run))
redis.disconnect()
await db.close()

// Coordinator: spawn + terminate pairs per second through the command handlers (zone lock,
// limits, inline tables, outbox), 16 workers over 16 zones, beside the backbone's ceiling
// measured in the same run (one INSERT statement per write); then spawn latency at half
// the measured pair rate, offered open-loop.
import { Effect } from "effect"
import { sql } from "kysely"
import { randomUUID } from "node:crypto"
import { outboxSignal } from "../core/outbox-signal.ts"
import { makeKeys } from "../core/redis/keys.ts"
import { freshDatabase } from "../core/testing/index.ts"
import { coordinatorProducer, makeCommands, PRODUCER } from "../services/coordinator/commands.ts"
import { makeProducer } from "../core/producer.ts"
import { openLoop, percentile, report, throughput } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 3000)
const C = 16
const db = await freshDatabase("bench_coord")
const kdb = db.database.db
// as in the service, whose own relay leads: commits wake it in-process, not by NOTIFY
outboxSignal.setLeading(PRODUCER, true)
const commands = makeCommands({
  producer: makeProducer(coordinatorProducer, { database: db.database, keys: makeKeys("benchcoord"), signer: undefined }),
  limits: { maxDepth: 10, maxChildren: 10, maxPerZone: 1_000_000, maxPerApp: 1_000_000, defaultTtlSeconds: 3600 }
})
const caller = (i: number) => ({ zoneId: `zone-${i % C}`, applicationId: "app-bench", requestId: `r${i}` })

const pair = async (i: number) => {
  const spawned = await Effect.runPromise(commands.spawn(caller(i), { applicationId: "app-bench", parentId: undefined, kind: "instance", ttlSeconds: undefined, metadata: {} }))
  await Effect.runPromise(commands.terminate(caller(i), spawned.result.id, "done"))
}
const ceilingWrite = (i: number) => sql`
  with e as (insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, 'z', 'ceiling', ${`c-${i}-${randomUUID()}`}, 1, 'AgentSpawned', 1, now(), '{}', 'c', '{}') returning position)
  insert into outbox (producer, stream, event_position, aggregate_key) select 'ceiling', 's', position, 'k' from e`.execute(kdb)

await throughput(200, C, pair) // warm up
await throughput(200, C, ceilingWrite)
const ceilings: Array<number> = []
const pairs: Array<number> = []
for (let round = 0; round < 2; round++) {
  ceilings.push(await throughput(N, C, ceilingWrite))
  pairs.push(await throughput(N / 2, C, pair))
}
const pairRate = Math.max(...pairs)
const ceiling = Math.max(...ceilings)
// a pair is two writes: compare writes per second with the ceiling's writes per second
report({ bench: "coordinator", metric: "spawn_terminate_writes_per_s_c16", value: pairRate * 2, unit: "writes/s", ceiling })
report({ bench: "coordinator", metric: "spawn_terminate_pairs_per_s_c16", value: pairRate, unit: "pairs/s", ceiling: ceiling / 2 })

// spawn latency at half the pair rate, offered on a fixed schedule
const rate = pairRate / 2
const seconds = Number(process.env.BENCH_SECONDS ?? 10)
// each spawn's terminate follows it, untimed: the load is pairs, the latency the spawn's
const terminations: Array<Promise<unknown>> = []
const latencies = await openLoop(rate, seconds, async (i) => {
  const s = await Effect.runPromise(commands.spawn(caller(i), { applicationId: "app-bench", parentId: undefined, kind: "instance", ttlSeconds: undefined, metadata: {} }))
  terminations.push(Effect.runPromise(commands.terminate(caller(i), s.result.id, "done")))
})
await Promise.all(terminations)
report({ bench: "coordinator", metric: `spawn_p50_ms_at_${Math.round(rate)}_pairs_per_s`, value: percentile(latencies, 50), unit: "ms", ceiling: 20 })
report({ bench: "coordinator", metric: `spawn_p99_ms_at_${Math.round(rate)}_pairs_per_s`, value: percentile(latencies, 99), unit: "ms", ceiling: 20 })
await db.close()

// The audit chain: ingest into one zone's chain (hashing, MACs, the Merkle frontier, dedup
// and the head lock per batch) beside a ceiling of batched inserts of the same rows;
// verification of N records beside a ceiling that reads the same rows and computes their
// HMACs; the Parquet export of N records (one window) beside a ceiling that writes the same
// Arrow table as Parquet to the local S3. BENCH_N (default 1,000,000) and BENCH_INGEST_N
// (default 100,000) set the sizes.
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3"
import { sql } from "kysely"
import { createSecretKey, randomBytes, randomUUID } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import { freshDatabase, manualClock, stackEnv } from "../core/testing/index.ts"
import { chainMac } from "../services/audit/chain.ts"
import { checkpointSigner } from "../services/audit/checkpoint.ts"
import { runExport, windowArrow } from "../services/audit/export.ts"
import { type Incoming, ingest, type IngestDeps, zoneDirectory } from "../services/audit/ingest.ts"
import { toParquet } from "../services/audit/parquet.ts"
import { chainPages, verifyStoredChain } from "../services/audit/store.ts"
import { report } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 1_000_000)
const INGEST_N = Number(process.env.BENCH_INGEST_N ?? 100_000)
const BATCH = 500
const db = await freshDatabase("bench_audit")
const kdb = db.database.db
const hmacKey = createSecretKey(randomBytes(32))
const signer = checkpointSigner(randomBytes(32))
const clock = manualClock("2026-06-01T10:00:00.000Z")
const deps: IngestDeps = { db: kdb, key: hmacKey, signer, zones: zoneDirectory(kdb), now: clock.now }
const zoneFor = async (zone: string) => {
  await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, ${zone}, 'zone', ${zone}, 1, 'ZoneCreated', 1, now(), '{"kind":"bench","id":"b"}', 'c', '{}')`.execute(kdb)
  return zone
}
const records = (zone: string, n: number): Array<Incoming> =>
  Array.from({ length: n }, (_, i) => ({
    origin: "record" as const,
    stream: "audit",
    body: {
      id: uuidv7(), zone_id: zone, source: i % 2 ? "gateway" : "sts", kind: i % 2 ? "proxy" : "token_exchange", decision: "allow", reason: null,
      request_id: randomUUID(), trace_id: null, client_id: "app-bench", agent_session_id: `sess-${i % 100}`, delegation_edge_id: null,
      resource: "api", scope: "read write", jti: randomBytes(16).toString("base64url"), status: 200, latency_ms: 2, occurred_at: clock.now().toISOString()
    }
  }))

let ingestCeiling = 0

// ---------------------------------------------------------------- ingest
{
  const zone = await zoneFor("bench-ingest")
  const input = records(zone, INGEST_N)
  const start = performance.now()
  for (let i = 0; i < input.length; i += BATCH) await ingest(deps, input.slice(i, i + BATCH))
  const rate = INGEST_N / ((performance.now() - start) / 1000)
  // ceiling: the same rows, already computed, inserted in the same batches under another chain name
  const rows = (await sql<Record<string, unknown>>`select * from audit_records where zone = ${zone} order by seq`.execute(kdb)).rows
  const col = (k: string) => rows.map((r) => r[k])
  const c = { seq: col("seq"), id: col("id"), occ: col("occurred_at"), src: col("source"), kind: col("kind"), dec: col("decision"), req: col("request_id"),
    ses: col("session_id"), cli: col("client_id"), jti: col("jti"), can: col("canonical"), pm: col("prev_mac"), m: col("mac"), l: col("leaf_hash") }
  const at = clock.now().toISOString()
  const cstart = performance.now()
  for (let i = 0; i < rows.length; i += BATCH) {
    const s = (a: Array<unknown>) => a.slice(i, i + BATCH)
    await sql`insert into audit_records (zone, seq, id, recorded_at, occurred_at, source, kind, decision, request_id, session_id, client_id, jti,
        canonical, prev_mac, mac, leaf_hash)
      select 'ceiling', s, i, ${at}::timestamptz, o, src, k, d, r, ses, cl, j, can, pm, m, l
      from unnest(${s(c.seq)}::bigint[], ${s(c.id)}::text[], ${s(c.occ)}::timestamptz[], ${s(c.src)}::text[], ${s(c.kind)}::text[],
        ${s(c.dec)}::text[], ${s(c.req)}::text[], ${s(c.ses)}::text[], ${s(c.cli)}::text[], ${s(c.jti)}::text[],
        ${s(c.can)}::bytea[], ${s(c.pm)}::bytea[], ${s(c.m)}::bytea[], ${s(c.l)}::bytea[]) as t(s, i, o, src, k, d, r, ses, cl, j, can, pm, m, l)`.execute(kdb)
  }
  const ceiling = rows.length / ((performance.now() - cstart) / 1000)
  await sql`delete from audit_records where zone = 'ceiling'`.execute(kdb)
  report({ bench: "audit", metric: `ingest_one_zone_${INGEST_N}`, value: rate, unit: "records/s", ceiling })
  ingestCeiling = ceiling
}

// ---------------------------------------------------------------- seed N records for verify and export
const zone = await zoneFor("bench-verify")
clock.set("2026-06-01T11:00:00.000Z") // one export window holds them all
{
  const start = performance.now()
  for (let i = 0; i < N; i += 5000) await ingest(deps, records(zone, Math.min(5000, N - i)))
  await sql`vacuum analyze audit_records`.execute(kdb)
  process.stderr.write(`seeded ${N} records in ${((performance.now() - start) / 1000).toFixed(1)} s\n`)
}
// a checkpoint at the end, so verification checks a signed root too
{
  const { checkpointChains } = await import("../services/audit/ingest.ts")
  await checkpointChains(kdb, signer, clock.now())
}

// ---------------------------------------------------------------- verify
{
  const { publicKeyFromHex } = await import("../services/audit/checkpoint.ts")
  const start = performance.now()
  const r = await verifyStoredChain(kdb, zone, { hmacKey, publicKey: publicKeyFromHex(signer.publicKeyHex) })
  const rate = N / ((performance.now() - start) / 1000)
  if (!r.ok || r.records !== N) throw new Error(`verification failed: ${JSON.stringify(r.firstBad)}`)
  // ceiling: the same rows read by the same reader (pages of 5,000), each one's HMAC computed
  const cstart = performance.now()
  let n = 0
  for await (const rows of chainPages(kdb, zone)) {
    for (const row of rows) chainMac(hmacKey, zone, row.seq, row.prevMac, row.canonical)
    n += rows.length
  }
  if (n !== N) throw new Error(`ceiling read ${n}`)
  const ceiling = N / ((performance.now() - cstart) / 1000)
  report({ bench: "audit", metric: `verify_${N}`, value: rate, unit: "records/s", ceiling })
}

// ---------------------------------------------------------------- export
{
  await sql`delete from audit_records where zone <> ${zone}`.execute(kdb)
  const s3 = new S3Client({
    region: "us-east-1", endpoint: stackEnv().S3_ENDPOINT, forcePathStyle: true, credentials: { accessKeyId: "bench", secretAccessKey: "bench" }
  })
  const bucket = `bench-audit-${randomBytes(4).toString("hex")}`
  await s3.send(new CreateBucketCommand({ Bucket: bucket }))
  const windowStart = new Date("2026-06-01T11:00:00.000Z")
  // both figures with the Parquet writer warm: its first call grows the wasm memory to the
  // table's size, which only the export paid when it ran first (the ceiling then ran warm)
  const { table } = await windowArrow(kdb, windowStart, new Date(windowStart.getTime() + 3_600_000), signer.publicKeyHex)
  toParquet(table)
  const start = performance.now()
  const r = await runExport({ database: db.database, s3, bucket, windowS: 3600, signer, graceS: 60, holder: "bench" }, new Date("2026-06-01T12:05:00.000Z"))
  const seconds = (performance.now() - start) / 1000
  const exported = r.windows.reduce((a, w) => a + w.records, 0)
  if (exported !== N) throw new Error(`exported ${exported} of ${N}`)
  // ceiling: the same Arrow table (built above, before the export), written as Parquet to the same S3
  const cstart = performance.now()
  const body = toParquet(table)
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "ceiling.parquet", Body: body }))
  const cseconds = (performance.now() - cstart) / 1000
  process.stderr.write(`export: one object of ${(body.length / 1e6).toFixed(1)} MB\n`)
  report({ bench: "audit", metric: `export_${N}`, value: N / seconds, unit: "records/s", ceiling: N / cseconds })
  s3.destroy()
}

await db.close()

// ---------------------------------------------------------------- ingest through the service
// The same kind of records, signed on the audit stream, consumed by an audit service process
// (its own database: its self-verification must not read the chains above).
{
  const E2E_N = Number(process.env.BENCH_E2E_N ?? 50_000)
  const { startService, testRedis } = await import("../core/testing/index.ts")
  const { makeAuditLog } = await import("../core/audit-log.ts")
  const { signingKey } = await import("../core/signing.ts")
  const { Effect } = await import("effect")
  const own = await freshDatabase("bench_audit_e2e")
  const redis = await testRedis("benchaudit")
  const streamsKey = randomBytes(32)
  const zone = "bench-e2e"
  await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, ${zone}, 'zone', ${zone}, 1, 'ZoneCreated', 1, now(), '{"kind":"bench","id":"b"}', 'c', '{}')`.execute(own.database.db)
  // a backlog first: the figure is the service's sustained consumption, not the publisher's pace
  const log = makeAuditLog(redis.redis, redis.keys, signingKey(streamsKey))
  const input = records(zone, E2E_N).map((r) => r.body as never)
  for (let i = 0; i < input.length; i += 500) await Promise.all(input.slice(i, i + 500).map((r) => Effect.runPromise(log.append(r))))
  const service = await startService("audit", {
    DATABASE_URL: own.url, REDIS_URL: stackEnv().REDIS_URL, REDIS_KEY_PREFIX: redis.keys.prefix, INSECURE_HTTP: "true", LOG_LEVEL: "warn",
    STREAMS_HMAC_KEY: streamsKey.toString("hex"), AUDIT_HMAC_KEY: randomBytes(32).toString("hex"), AUDIT_CHECKPOINT_KEY: randomBytes(32).toString("hex")
  })
  // the chain's head seq is its row count (both move in one transaction), read in O(1): a count(*)
  // over up to E2E_N rows every 20 ms took Postgres time from the service it measures
  const chained = async () => Number((await sql<{ n: string }>`select seq as n from audit_chain_heads where zone = ${zone}`.execute(own.database.db)).rows[0]?.n ?? 0)
  let first = 0
  while ((first = await chained()) === 0) await new Promise((r) => setTimeout(r, 20))
  const start = performance.now()
  while ((await chained()) < E2E_N) await new Promise((r) => setTimeout(r, 20))
  const rate = (E2E_N - first) / ((performance.now() - start) / 1000)
  report({ bench: "audit", metric: `ingest_through_service_${E2E_N}`, value: rate, unit: "records/s", ceiling: ingestCeiling })
  await service.stop("SIGKILL")
  await redis.close()
  await own.close()
}

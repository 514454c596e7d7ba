// The Parquet export against a real S3 endpoint (a moto server of this test's own, behind a
// proxy the test can cut): one object per closed window at its documented key, DuckDB reads
// them, the offline verifier recomputes chains and Merkle roots from the files alone, a rerun
// writes nothing, and S3 failing mid-upload leaves no object behind.
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3"
import { DuckDBInstance } from "@duckdb/node-api"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { createSecretKey, randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { v7 as uuidv7 } from "uuid"
import type { DatabaseShape } from "../../core/db/database.ts"
import { freePort, freshDatabase, manualClock, runScript, type TestDatabase, waitFor } from "../../core/testing/index.ts"
import { checkpointSigner } from "../../services/audit/checkpoint.ts"
import { type ExportDeps, runExport, windowKey } from "../../services/audit/export.ts"
import { dirSource, verifyExport } from "../../services/audit/export-verify.ts"
import { checkpointChains, ingest, type IngestDeps, zoneDirectory } from "../../services/audit/ingest.ts"
import { forgetPartitions } from "../../services/audit/partitions.ts"
import { verifyStoredChain } from "../../services/audit/store.ts"
import { queryRows } from "../fixtures/harness.ts"
import { tcpProxy } from "../fixtures/proxy.ts"

const HOUR = 3_600_000
const BUCKET = "audit-export-test"

describe("audit export to S3", () => {
  let db: TestDatabase & { database: DatabaseShape; close: () => Promise<void> }
  let moto: ReturnType<typeof spawn>
  let proxy: Awaited<ReturnType<typeof tcpProxy>>
  let s3: S3Client
  let direct: S3Client
  let endpoint: string
  const clock = manualClock("2026-03-01T00:05:00.000Z")
  const hmacSeed = randomBytes(32)
  const checkpointSeed = randomBytes(32)
  const signer = checkpointSigner(checkpointSeed)
  let deps: IngestDeps
  let exportDeps: ExportDeps
  const zones = [`zone-${randomBytes(4).toString("hex")}`, `zone-${randomBytes(4).toString("hex")}`]
  const tmp = mkdtempSync(path.join(os.tmpdir(), "audit-export-"))

  beforeAll(async () => {
    const port = await freePort()
    moto = spawn("moto_server", ["-H", "127.0.0.1", "-p", String(port)], { stdio: "ignore" })
    await waitFor(async () => fetch(`http://127.0.0.1:${port}/`).then(() => true, () => false), 30_000, 100)
    proxy = await tcpProxy({ host: "127.0.0.1", port })
    endpoint = `http://127.0.0.1:${proxy.port}`
    const client = (url: string) =>
      new S3Client({ region: "us-east-1", endpoint: url, forcePathStyle: true, maxAttempts: 1, credentials: { accessKeyId: "test", secretAccessKey: "test" } })
    s3 = client(endpoint)
    direct = client(`http://127.0.0.1:${port}`)
    await direct.send(new CreateBucketCommand({ Bucket: BUCKET }))
    db = await freshDatabase("auditexport")
    forgetPartitions()
    for (const z of zones) {
      await queryRows(db.url, `insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
        correlation_id, data) values ($1, $2, 'zone', $2, 1, 'ZoneCreated', 1, now(), '{"kind":"admin","id":"t"}', $3, '{}')`, [randomUUID(), z, randomUUID()])
    }
    deps = { db: db.database.db, key: createSecretKey(hmacSeed), signer, zones: zoneDirectory(db.database.db), now: clock.now }
    exportDeps = { database: db.database, s3, bucket: BUCKET, windowS: 3600, signer, graceS: 60, holder: "test-exporter" }
  }, 90_000)
  afterAll(async () => {
    s3?.destroy()
    direct?.destroy()
    await proxy?.down()
    moto?.kill("SIGKILL")
    await db?.close()
    rmSync(tmp, { recursive: true, force: true })
  })

  /** `n` records per zone in the current hour, then a checkpoint. */
  const hourOf = async (n: number) => {
    for (const z of zones) {
      await ingest(deps, Array.from({ length: n }, () => ({
        origin: "record" as const, stream: "audit",
        body: { id: uuidv7(), zone_id: z, source: "gateway", kind: "proxy", decision: "allow", request_id: randomUUID(), occurred_at: clock.now().toISOString() }
      })))
    }
    await checkpointChains(db.database.db, signer, clock.now())
  }

  const keys = async () =>
    ((await direct.send(new ListObjectsV2Command({ Bucket: BUCKET }))).Contents ?? []).map((o) => o.Key!).sort()

  const download = async (dir: string) => {
    for (const key of await keys()) {
      const body = await (await direct.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }))).Body!.transformToByteArray()
      mkdirSync(path.dirname(path.join(dir, key)), { recursive: true })
      writeFileSync(path.join(dir, key), body)
    }
  }

  it("writes one object per closed window at its key; DuckDB counts the rows; the files verify without the database", async () => {
    await hourOf(40) // 00:05
    clock.advance(HOUR)
    await hourOf(25) // 01:05
    clock.advance(HOUR)
    await hourOf(10) // 02:05: this window is still open at 02:05 + grace
    const report = await runExport(exportDeps, clock.now())
    assert.isTrue(report.leader)
    assert.deepStrictEqual(report.windows.map((w) => [w.key, w.records, w.written]), [
      ["audit/v1/window=2026-03-01T00:00:00.000Z/records.parquet", 80, true],
      ["audit/v1/window=2026-03-01T01:00:00.000Z/records.parquet", 50, true]
    ])
    assert.strictEqual(windowKey(new Date("2026-03-01T00:00:00Z")), report.windows[0]!.key)
    assert.deepStrictEqual(await keys(), report.windows.map((w) => w.key))

    const dir = path.join(tmp, "first")
    await download(dir)
    const duck = await (await DuckDBInstance.create(":memory:")).connect()
    const counted = (await duck.runAndReadAll(
      `select count(*)::int as n, count(distinct zone)::int as zones from read_parquet('${dir}/**/*.parquet') where row_kind = 'record'`
    )).getRowObjects()
    assert.deepStrictEqual(counted, [{ n: 130, zones: 2 }])
    const cps = (await duck.runAndReadAll(`select count(*)::int as n from read_parquet('${dir}/**/*.parquet') where row_kind = 'checkpoint'`)).getRowObjects()
    assert.isAbove(Number(cps[0]!.n), 0)

    const verified = await verifyExport(dirSource(dir), { hmacKey: createSecretKey(hmacSeed), publicKeyHex: signer.publicKeyHex })
    assert.strictEqual(verified.files, 2)
    for (const c of verified.chains) {
      assert.isTrue(c.ok, JSON.stringify(c))
      assert.strictEqual(c.lastSeq, 65)
      assert.isAbove(c.checkpointsVerified, 0)
      // the root recomputed from the files is the chain's root in the database at that size
      const [row] = await queryRows<{ root: Buffer }>(db.url, "select root from audit_checkpoints where zone = $1 and tree_size = 65", [c.chain])
      assert.strictEqual(c.root, row!.root.toString("hex"))
    }
    // the records carry their chain positions (DuckDB reads the Merkle and chain columns like any other)
    const duckRows = (await duck.runAndReadAll(`select zone, seq from read_parquet('${dir}/**/*.parquet') where row_kind = 'record' order by zone, seq limit 1`)).getRowObjects()
    assert.strictEqual(Number(duckRows[0]!.seq), 1)

    // the CLI verifies straight from the bucket
    const cli = await runScript("cli/main.ts", ["audit", "verify", "--from-export", `s3://${BUCKET}/audit/v1/`], {
      AUDIT_EXPORT_S3_ENDPOINT: endpoint, AWS_ACCESS_KEY_ID: "test", AWS_SECRET_ACCESS_KEY: "test",
      AUDIT_HMAC_KEY: hmacSeed.toString("hex"), AUDIT_CHECKPOINT_PUBLIC_KEY: signer.publicKeyHex
    }, 60_000)
    assert.strictEqual(cli.code, 0, cli.stdout + cli.stderr)
    assert.match(cli.stdout, new RegExp(`${zones[0]}: ok, records 1\\.\\.65`))
  }, 120_000)

  it("a rerun writes nothing new, and an existing object is never overwritten", async () => {
    const before = await keys()
    const again = await runExport(exportDeps, clock.now())
    assert.deepStrictEqual(again.windows, [])
    assert.deepStrictEqual(await keys(), before)
    // the watermark moved back (a run that stopped before recording its progress): the same bytes, kept
    await queryRows(db.url, "update audit_export_state set next_window = '2026-03-01T01:00:00Z'")
    await queryRows(db.url, "delete from audit_export_zones")
    await queryRows(db.url, `insert into audit_export_zones (zone, next_seq, prev_mac, frontier)
      select zone, 41, mac, sha256('a'::bytea) || sha256('b'::bytea) from audit_records where seq = 40`)
    const replay = await runExport(exportDeps, clock.now()).catch((e: Error) => e)
    // the frontier above is wrong on purpose: the file would differ, so it is refused, not overwritten
    assert.instanceOf(replay, Error)
    assert.match((replay as Error).message, /exists with other content; it is never overwritten/)
    assert.deepStrictEqual(await keys(), before)
  }, 60_000)

  it("when S3 stops mid-upload: no partial object, the watermark stays, and the next run completes the window", async () => {
    // put the export state back where the first run left it
    await queryRows(db.url, "update audit_export_state set next_window = '2026-03-01T02:00:00Z'")
    await queryRows(db.url, "delete from audit_export_zones")
    for (const z of zones) {
      const [s] = await queryRows<{ mac: Buffer }>(db.url, "select mac from audit_records where zone = $1 and seq = 65", [z])
      const { append, encodeFrontier, EMPTY_FRONTIER } = await import("../../services/audit/merkle.ts")
      const leaves = (await queryRows<{ leaf_hash: Buffer }>(db.url, "select leaf_hash from audit_records where zone = $1 and seq <= 65 order by seq", [z]))
        .map((r) => r.leaf_hash)
      await queryRows(db.url, "insert into audit_export_zones (zone, next_seq, prev_mac, frontier) values ($1, 66, $2, $3)",
        [z, s!.mac, encodeFrontier(append(EMPTY_FRONTIER, leaves))])
    }
    clock.advance(HOUR)
    await hourOf(400) // 03:05: a window large enough to be cut mid-upload
    clock.advance(HOUR)
    proxy.cutAfterBytes(20_000)
    const failed = await runExport(exportDeps, clock.now()).catch((e: Error) => e)
    assert.instanceOf(failed, Error)
    const partial = await keys()
    // the small 02:00 window went through before the cut; the large 03:00 one was cut off
    assert.include(partial, windowKey(new Date("2026-03-01T02:00:00.000Z")))
    assert.notInclude(partial, windowKey(new Date("2026-03-01T03:00:00.000Z")))
    assert.strictEqual(partial.length, 3)
    const [state] = await queryRows<{ next_window: Date }>(db.url, "select next_window from audit_export_state")
    assert.strictEqual(state!.next_window.toISOString(), "2026-03-01T03:00:00.000Z")

    proxy.cutAfterBytes(undefined)
    const resumed = await runExport(exportDeps, clock.now())
    assert.deepStrictEqual(resumed.windows.map((w) => [w.key, w.written]), [
      ["audit/v1/window=2026-03-01T03:00:00.000Z/records.parquet", true]
    ])
    const dir = path.join(tmp, "all")
    await download(dir)
    const verified = await verifyExport(dirSource(dir), { hmacKey: createSecretKey(hmacSeed), publicKeyHex: signer.publicKeyHex })
    assert.strictEqual(verified.files, 4)
    for (const c of verified.chains) {
      assert.isTrue(c.ok, JSON.stringify(c))
      assert.strictEqual(c.lastSeq, 475)
      const db2 = await verifyStoredChain(db.database.db, c.chain, { hmacKey: createSecretKey(hmacSeed) })
      assert.strictEqual(c.root, db2.root)
    }
  }, 120_000)

  /** A zone of a database of the test's own, and ingest dependencies whose clock stands at `at`. */
  const ownZone = async (own: TestDatabase & { database: DatabaseShape }, at: Date) => {
    const z = `zone-${randomBytes(4).toString("hex")}`
    await queryRows(own.url, `insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
      correlation_id, data) values ($1, $2, 'zone', $2, 1, 'ZoneCreated', 1, now(), '{"kind":"admin","id":"t"}', $3, '{}')`, [randomUUID(), z, randomUUID()])
    const ownDeps: IngestDeps = { db: own.database.db, key: createSecretKey(hmacSeed), signer, zones: zoneDirectory(own.database.db), now: () => at }
    return { z, ownDeps }
  }

  it("a window of more chunks than are read at once is written as it is read, and verifies from the file alone", async () => {
    const own = await freshDatabase("auditexportbig")
    try {
      const at = new Date("2026-04-01T10:30:00.000Z")
      const { z, ownDeps } = await ownZone(own, at)
      // 35,000 records of one chain: four chunks of 10,000 (the reader keeps two ahead), checkpoints among them
      const total = 35_000
      for (let i = 0; i < total; i += 5_000) {
        await ingest(ownDeps, Array.from({ length: 5_000 }, (_, j) => ({
          origin: "record" as const, stream: "audit",
          body: { id: uuidv7(), zone_id: z, source: "gateway", kind: "proxy", decision: j % 7 === 0 ? "deny" : "allow", request_id: randomUUID(), occurred_at: at.toISOString() }
        })))
        await checkpointChains(own.database.db, signer, at)
      }
      const bucket = `big-${randomBytes(4).toString("hex")}`
      await direct.send(new CreateBucketCommand({ Bucket: bucket }))
      const report = await runExport({ ...exportDeps, database: own.database, bucket }, new Date("2026-04-01T11:05:00.000Z"))
      assert.deepStrictEqual(report.windows.map((w) => [w.records, w.written]), [[total, true]])
      const dir = path.join(tmp, "big")
      const body = await (await direct.send(new GetObjectCommand({ Bucket: bucket, Key: report.windows[0]!.key }))).Body!.transformToByteArray()
      mkdirSync(path.dirname(path.join(dir, report.windows[0]!.key)), { recursive: true })
      writeFileSync(path.join(dir, report.windows[0]!.key), body)
      const verified = await verifyExport(dirSource(dir), { hmacKey: createSecretKey(hmacSeed), publicKeyHex: signer.publicKeyHex })
      assert.strictEqual(verified.chains.length, 1)
      const chain = verified.chains[0]!
      assert.isTrue(chain.ok, JSON.stringify(chain))
      assert.strictEqual(chain.lastSeq, total)
      assert.isAtLeast(chain.checkpointsVerified, 7)
      const [root] = await queryRows<{ root: Buffer }>(own.url, "select root from audit_checkpoints where zone = $1 and tree_size = $2", [z, total])
      assert.strictEqual(chain.root, root!.root.toString("hex"))
      const duck = await (await DuckDBInstance.create(":memory:")).connect()
      const counted = (await duck.runAndReadAll(
        `select count(*)::int as n, min(seq)::int as lo, max(seq)::int as hi from read_parquet('${dir}/**/*.parquet') where row_kind = 'record'`
      )).getRowObjects()
      assert.deepStrictEqual(counted, [{ n: total, lo: 1, hi: total }])
    } finally {
      await own.close()
    }
  }, 180_000)

  it("caracal audit export writes the closed windows now, with a progress bar", async () => {
    const own = await freshDatabase("auditexportcli")
    try {
      const twoHoursAgo = new Date(Date.now() - 2 * HOUR)
      const { z, ownDeps } = await ownZone(own, twoHoursAgo)
      await ingest(ownDeps, Array.from({ length: 5 }, () => ({
        origin: "record" as const, stream: "audit",
        body: { id: uuidv7(), zone_id: z, source: "sts", kind: "token_exchange", decision: "allow", request_id: randomUUID(), occurred_at: twoHoursAgo.toISOString() }
      })))
      await checkpointChains(own.database.db, signer, twoHoursAgo)
      const bucket = `cli-${randomBytes(4).toString("hex")}`
      await direct.send(new CreateBucketCommand({ Bucket: bucket }))
      const env = {
        DATABASE_URL: own.url, AUDIT_EXPORT_S3_BUCKET: bucket, AUDIT_EXPORT_S3_ENDPOINT: endpoint, AWS_ACCESS_KEY_ID: "test", AWS_SECRET_ACCESS_KEY: "test",
        AUDIT_CHECKPOINT_PUBLIC_KEY: signer.publicKeyHex
      }
      const r = await runScript("cli/main.ts", ["audit", "export"], env, 60_000)
      assert.strictEqual(r.code, 0, r.stdout + r.stderr)
      const start = new Date(Math.floor(twoHoursAgo.getTime() / HOUR) * HOUR)
      assert.include(r.stdout, `wrote s3://${bucket}/${windowKey(start)} (5 records)`)
      assert.match(r.stderr, /exporting \[#+\.*\] \d+%/)
      const again = await runScript("cli/main.ts", ["audit", "export"], env, 60_000)
      assert.strictEqual(again.code, 0, again.stderr)
      assert.notInclude(again.stdout, "wrote")
    } finally {
      await own.close()
    }
  }, 120_000)
})

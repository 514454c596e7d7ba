// The chain in Postgres, driven in-process with a test clock: retention drops whole
// partitions only under a checkpoint and the remainder still verifies; inclusion and
// consistency proofs check against signed checkpoints, and fail when forged or truncated.
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { createSecretKey, randomBytes, randomUUID } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import { freshDatabase, manualClock, type TestDatabase } from "../../core/testing/index.ts"
import type { DatabaseShape } from "../../core/db/database.ts"
import { checkpointSigner, publicKeyFromHex, verifyCheckpoint } from "../../services/audit/checkpoint.ts"
import { checkpointChains, ingest, type IngestDeps, zoneDirectory } from "../../services/audit/ingest.ts"
import { leafHash, verifyConsistency, verifyInclusion } from "../../services/audit/merkle.ts"
import { forgetPartitions, listPartitions } from "../../services/audit/partitions.ts"
import { consistencyProofFor, inclusionProofFor } from "../../services/audit/proofs.ts"
import { applyRetention } from "../../services/audit/retention.ts"
import { loadCheckpoints, verifyStoredChain } from "../../services/audit/store.ts"
import { queryRows } from "../fixtures/harness.ts"

const DAY = 86_400_000

describe("the audit chain in Postgres", () => {
  let db: TestDatabase & { database: DatabaseShape; close: () => Promise<void> }
  const clock = manualClock("2026-01-01T12:00:00.000Z")
  const hmacKey = createSecretKey(randomBytes(32))
  const signer = checkpointSigner(randomBytes(32))
  const publicKey = publicKeyFromHex(signer.publicKeyHex)
  let deps: IngestDeps
  const zone = `zone-${randomBytes(4).toString("hex")}`

  beforeAll(async () => {
    db = await freshDatabase("auditlog")
    forgetPartitions()
    await queryRows(db.url, `insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
      correlation_id, data) values ($1, $2, 'zone', $2, 1, 'ZoneCreated', 1, now(), '{"kind":"admin","id":"t"}', $3, '{}')`, [randomUUID(), zone, randomUUID()])
    deps = { db: db.database.db, key: hmacKey, signer, zones: zoneDirectory(db.database.db), now: clock.now, checkpointEvery: 1000 }
  }, 60_000)
  afterAll(() => db?.close())

  const put = (n: number, z = zone) =>
    ingest(deps, Array.from({ length: n }, () => ({
      origin: "record" as const, stream: "audit",
      body: { id: uuidv7(), zone_id: z, source: "sts", kind: "token_exchange", decision: "allow", request_id: randomUUID(), occurred_at: clock.now().toISOString() }
    })))

  it("retention with a test clock: expired partitions dropped under a checkpoint, the remainder verifies", async () => {
    await put(10) // day 1
    await checkpointChains(db.database.db, signer, clock.now())
    clock.advance(DAY)
    await put(10) // day 2
    await checkpointChains(db.database.db, signer, clock.now())
    clock.advance(DAY)
    await put(10) // day 3: not checkpointed yet
    assert.isTrue((await verifyStoredChain(db.database.db, zone, { hmacKey, publicKey })).ok)

    // nothing has expired yet
    assert.deepStrictEqual((await applyRetention(db.database.db, clock.now(), 365)).dropped, [])

    // a year later days 1-3 have expired; day 3 has no covering checkpoint, so it is held
    clock.advance(366 * DAY)
    const first = await applyRetention(db.database.db, clock.now(), 365)
    assert.deepStrictEqual(first.dropped, ["audit_records_p20260101", "audit_records_p20260102"])
    assert.match(first.held?.reason ?? "", /no signed checkpoint covers record 30/)
    const left = await verifyStoredChain(db.database.db, zone, { hmacKey, publicKey })
    assert.isTrue(left.ok, JSON.stringify(left.firstBad))
    assert.strictEqual(left.firstSeq, 21)
    assert.strictEqual(left.lastSeq, 30)

    // appending continues the chain; once checkpointed, day 3 goes too and what is left still verifies
    await put(5)
    await checkpointChains(db.database.db, signer, clock.now())
    const second = await applyRetention(db.database.db, clock.now(), 365)
    assert.deepStrictEqual(second.dropped, ["audit_records_p20260103"])
    const rest = await verifyStoredChain(db.database.db, zone, { hmacKey, publicKey })
    assert.isTrue(rest.ok, JSON.stringify(rest.firstBad))
    assert.deepStrictEqual([rest.firstSeq, rest.lastSeq], [31, 35])
    assert.notInclude((await listPartitions(db.database.db)).map((p) => p.name), "audit_records_p20260101")
    // the chain's checkpoints were all kept: the latest still verifies against what is left
    assert.strictEqual(rest.checkpointsVerified, 1)
  }, 60_000)

  it("an inclusion proof verifies against a signed checkpoint; a forged one fails", async () => {
    const z = `zone-${randomBytes(4).toString("hex")}`
    await queryRows(db.url, `insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
      correlation_id, data) values ($1, $2, 'zone', $2, 1, 'ZoneCreated', 1, now(), '{"kind":"admin","id":"t"}', $3, '{}')`, [randomUUID(), z, randomUUID()])
    await put(13, z)
    await checkpointChains(db.database.db, signer, clock.now())
    const [cp] = await loadCheckpoints(db.database.db, z)
    assert.isTrue(verifyCheckpoint(publicKey, cp!))
    for (const seq of [1, 7, 13]) {
      const p = await inclusionProofFor(db.database.db, z, seq, cp!.treeSize)
      const path = p.path.map((x) => Buffer.from(x, "hex"))
      assert.isTrue(verifyInclusion(Buffer.from(p.leafHash, "hex"), seq - 1, cp!.treeSize, path, cp!.root), `record ${seq}`)
      assert.isFalse(verifyInclusion(leafHash("a record never chained"), seq - 1, cp!.treeSize, path, cp!.root))
      const forged = path.map((h, i) => (i === path.length - 1 ? leafHash("forged") : h))
      assert.isFalse(verifyInclusion(Buffer.from(p.leafHash, "hex"), seq - 1, cp!.treeSize, forged, cp!.root))
    }
    // a checkpoint signed by another key is not evidence
    const other = checkpointSigner(randomBytes(32)).sign({ zone: z, treeSize: cp!.treeSize, root: cp!.root, signedAt: cp!.signedAt })
    assert.isFalse(verifyCheckpoint(publicKey, other))
  }, 60_000)

  it("a consistency proof between two checkpoints verifies, and fails after the tail was truncated and rewritten", async () => {
    const z = `zone-${randomBytes(4).toString("hex")}`
    await queryRows(db.url, `insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor,
      correlation_id, data) values ($1, $2, 'zone', $2, 1, 'ZoneCreated', 1, now(), '{"kind":"admin","id":"t"}', $3, '{}')`, [randomUUID(), z, randomUUID()])
    await put(11, z)
    await checkpointChains(db.database.db, signer, clock.now())
    await put(9, z)
    await checkpointChains(db.database.db, signer, clock.now())
    const [older, newer] = await loadCheckpoints(db.database.db, z)
    assert.deepStrictEqual([older!.treeSize, newer!.treeSize], [11, 20])
    const proof = await consistencyProofFor(db.database.db, z, 11, 20)
    const path = proof.path.map((x) => Buffer.from(x, "hex"))
    assert.isTrue(verifyConsistency(11, 20, older!.root, newer!.root, path))

    // someone with database access cuts records 9..20 and appends other records in their place
    await queryRows(db.url, "delete from audit_records where zone = $1 and seq >= 9", [z])
    await queryRows(db.url, "update audit_chain_heads set seq = 8, frontier = (select frontier from audit_chain_heads where zone = $1) where zone = $1", [z])
    await queryRows(db.url, `insert into audit_records (zone, seq, id, recorded_at, occurred_at, source, kind, canonical, prev_mac, mac, leaf_hash)
      select zone, s, gen_random_uuid()::text, recorded_at, occurred_at, source, kind, canonical, prev_mac, mac, sha256(('rewritten' || s)::bytea)
      from audit_records, generate_series(9, 20) s where zone = $1 and seq = 8`, [z])
    const after = await consistencyProofFor(db.database.db, z, 11, 20)
    assert.isFalse(verifyConsistency(11, 20, older!.root, newer!.root, after.path.map((x) => Buffer.from(x, "hex"))))
    const report = await verifyStoredChain(db.database.db, z, { hmacKey, publicKey })
    assert.isFalse(report.ok)
    assert.strictEqual(report.firstBad?.seq, 9)
  }, 60_000)
})

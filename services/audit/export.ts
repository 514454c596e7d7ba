// The Parquet export: every closed window of recorded_at (AUDIT_EXPORT_WINDOW_S, hourly by
// default) becomes one object, audit/v1/window=<start ISO>/records.parquet, in
// AUDIT_EXPORT_S3_BUCKET. The watermark (audit_export_state.next_window) names the first
// window not yet exported; it moves only after the object is stored, in a statement that
// checks this exporter still holds the lease (a deposed leader cannot move it). An object
// is written with If-None-Match: * (never overwritten); one that is already there with the
// same bytes is a previous run that stopped before moving the watermark. A PUT is whole or
// absent, so S3 failing mid-upload leaves nothing, and the next run writes the window again.
import { HeadObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3"
import { createHash } from "node:crypto"
import { type Kysely, sql } from "kysely"
import type { DatabaseShape } from "../../core/db/database.ts"
import { acquireLease, type Lease, renewLease } from "../../core/relay-lease.ts"
import { GENESIS } from "./chain.ts"
import type { CheckpointSigner } from "./checkpoint.ts"
import { append, decodeFrontier, EMPTY_FRONTIER, encodeFrontier, type Frontier } from "./merkle.ts"
import { type ExportRecord, toParquet, type WindowContent, windowTable } from "./parquet.ts"
import { type RecordBatch, Table } from "apache-arrow"

export const EXPORT_LEASE = "audit-export"
export const windowKey = (start: Date) => `audit/v1/window=${start.toISOString()}/records.parquet`

export interface ExportDeps {
  readonly database: DatabaseShape
  readonly s3: S3Client
  readonly bucket: string
  readonly windowS: number
  readonly signer: Pick<CheckpointSigner, "publicKeyHex">
  /** Seconds after its end before a window counts as closed (records still in flight, the last checkpoint). */
  readonly graceS: number
  readonly holder: string
  readonly leaseMs?: number
  readonly onProgress?: (done: number, total: number) => void
}

export interface ExportReport {
  readonly windows: ReadonlyArray<{ readonly key: string; readonly records: number; readonly written: boolean }>
  readonly leader: boolean
}

const floorTo = (t: number, s: number) => Math.floor(t / (s * 1000)) * s * 1000

class LostLease extends Error {}

/** Exports every closed window not yet exported; returns what it did. Safe to run on every replica. */
export const runExport = async (deps: ExportDeps, now: Date): Promise<ExportReport> => {
  const leaseMs = deps.leaseMs ?? 60_000
  let lease: Lease | undefined = await acquireLease(deps.database, EXPORT_LEASE, deps.holder, leaseMs)
  if (lease === undefined) return { windows: [], leader: false }
  const db = deps.database.db
  const windows: Array<ExportReport["windows"][number]> = []
  try {
    const first = await startOf(db, deps.windowS, now)
    if (first === undefined) return { windows, leader: true }
    let next: Date = first
    const closedBefore = now.getTime() - deps.graceS * 1000
    const total = Math.max(0, Math.floor((closedBefore - next.getTime()) / (deps.windowS * 1000)))
    while (next.getTime() + deps.windowS * 1000 <= closedBefore) {
      lease = await renewLease(deps.database, EXPORT_LEASE, deps.holder, lease!, leaseMs)
      if (lease === undefined) throw new LostLease()
      const end: Date = new Date(next.getTime() + deps.windowS * 1000)
      windows.push(await exportWindow(deps, lease, next, end))
      deps.onProgress?.(windows.length, total)
      next = end
    }
    return { windows, leader: true }
  } catch (e) {
    if (e instanceof LostLease) return { windows, leader: false }
    throw e
  } finally {
    if (lease !== undefined) {
      await sql`update relay_leases set expires_at = '-infinity' where producer = ${EXPORT_LEASE} and holder = ${deps.holder}
        and epoch = ${lease.epoch.toString()}::bigint`.execute(db).catch(() => undefined)
    }
  }
}

/** The watermark; on the first run, the window of the oldest record (nothing to do without records). */
const startOf = async (db: Kysely<any>, windowS: number, now: Date): Promise<Date | undefined> => {
  const row = (await sql<{ next_window: Date }>`select next_window from audit_export_state where id = 1`.execute(db)).rows[0]
  if (row) return row.next_window
  const oldest = (await sql<{ t: Date | null }>`select min(recorded_at) as t from audit_records`.execute(db)).rows[0]?.t
  if (oldest === null || oldest === undefined) return undefined
  const start = new Date(floorTo(Math.min(oldest.getTime(), now.getTime()), windowS))
  await sql`insert into audit_export_state (id, next_window) values (1, ${start.toISOString()}::timestamptz) on conflict do nothing`.execute(db)
  return (await sql<{ next_window: Date }>`select next_window from audit_export_state where id = 1`.execute(db)).rows[0]!.next_window
}

interface ChainState {
  readonly nextSeq: number
  readonly prevMac: Buffer
  readonly frontier: Frontier
}

/** Where each chain stood at the window's start: the export's own state, or retention's anchor if it dropped past it. */
const chainStates = async (db: Kysely<any>, zones: ReadonlyArray<string>): Promise<Map<string, ChainState>> => {
  const out = new Map<string, ChainState>()
  const exported = (await sql<{ zone: string; next_seq: string; prev_mac: Buffer; frontier: Buffer }>`
    select zone, next_seq, prev_mac, frontier from audit_export_zones where zone = any(${zones})`.execute(db)).rows
  const anchors = (await sql<{ zone: string; first_seq: string; prev_mac: Buffer; frontier: Buffer }>`
    select zone, first_seq, prev_mac, frontier from audit_chain_anchors where zone = any(${zones})`.execute(db)).rows
  for (const z of zones) {
    const e = exported.find((x) => x.zone === z)
    const a = anchors.find((x) => x.zone === z)
    const fromE = e ? { nextSeq: Number(e.next_seq), prevMac: e.prev_mac, frontier: decodeFrontier(Number(e.next_seq) - 1, e.frontier) } : undefined
    const fromA = a ? { nextSeq: Number(a.first_seq), prevMac: a.prev_mac, frontier: decodeFrontier(Number(a.first_seq) - 1, a.frontier) } : undefined
    out.set(z, fromA && (!fromE || fromA.nextSeq > fromE.nextSeq) ? fromA : fromE ?? { nextSeq: 1, prevMac: GENESIS, frontier: EMPTY_FRONTIER })
  }
  return out
}

// formatted by Postgres: a million Date objects parsed and re-serialised cost more than the rest of the read
const ISO = (column: string) => sql.raw(`to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`)

type RecordRow = {
  zone: string; seq: string; id: string; recorded_at: string; occurred_at: string; source: string; kind: string; decision: string | null
  request_id: string | null; session_id: string | null; client_id: string | null; jti: string | null
  canonical: Buffer; prev_mac: Buffer; mac: Buffer; leaf_hash: Buffer
}

const toRecord = (r: RecordRow): ExportRecord => ({
  zone: r.zone,
  seq: Number(r.seq),
  id: r.id,
  recordedAt: r.recorded_at,
  canonical: r.canonical,
  prevMac: r.prev_mac,
  mac: r.mac,
  leafHash: r.leaf_hash,
  columns: {
    occurred_at: r.occurred_at, source: r.source, kind: r.kind, decision: r.decision, request_id: r.request_id,
    session_id: r.session_id, client_id: r.client_id, jti: r.jti
  }
})

const CHUNK = 20_000

/**
 * The window's records in (zone, seq) order, a chunk at a time; the next chunk is asked for
 * while the caller turns this one into Arrow columns (Postgres and this process work at once,
 * and a million rows are never all held as objects).
 */
export async function* windowChunks(db: Kysely<any>, start: Date, end: Date, size = CHUNK): AsyncGenerator<Array<ExportRecord>> {
  const read = (after: { zone: string; seq: number } | undefined) =>
    sql<RecordRow>`
      select zone, seq, id, ${ISO("recorded_at")} as recorded_at, ${ISO("occurred_at")} as occurred_at, source, kind, decision, request_id,
        session_id, client_id, jti, canonical, prev_mac, mac, leaf_hash
      from audit_records where recorded_at >= ${start.toISOString()}::timestamptz and recorded_at < ${end.toISOString()}::timestamptz
        ${after ? sql`and (zone, seq) > (${after.zone}, ${after.seq})` : sql``}
      order by zone, seq limit ${size}`.execute(db).then((r) => r.rows)
  let next = read(undefined)
  for (;;) {
    const rows = await next
    const last = rows.at(-1)
    if (rows.length === size) next = read({ zone: last!.zone, seq: Number(last!.seq) })
    yield rows.map(toRecord)
    if (rows.length < size) return
  }
}

/** Where each chain's part of the window starts and ends, as the chunks go by. */
interface ZoneRun {
  readonly zone: string
  readonly leaves: Array<Buffer>
  lastSeq: number
  lastMac: Buffer
}

/** The checkpoints whose tree sizes fall in each chain's part of the window, and where each part starts. */
const windowTail = async (db: Kysely<any>, runs: ReadonlyArray<ZoneRun>, publicKey: string) => {
  const zones = runs.map((r) => r.zone)
  const states = await chainStates(db, zones)
  const ranges = runs.map((r) => ({ zone: r.zone, from: states.get(r.zone)!.nextSeq - 1, to: r.lastSeq }))
  const checkpoints = ranges.length === 0 ? [] : (await sql<{ zone: string; tree_size: string; root: Buffer; signed_at: string; key_id: string; signature: Buffer }>`
    select c.zone, c.tree_size, c.root, c.signed_at, c.key_id, c.signature from audit_checkpoints c
    join unnest(${ranges.map((r) => r.zone)}::text[], ${ranges.map((r) => r.from)}::bigint[], ${ranges.map((r) => r.to)}::bigint[]) as w(zone, lo, hi)
      on c.zone = w.zone and c.tree_size >= w.lo and c.tree_size <= w.hi
    order by c.zone, c.tree_size`.execute(db)).rows.map((c) => ({
      zone: c.zone, treeSize: Number(c.tree_size), root: c.root, signedAt: c.signed_at, keyId: c.key_id, signature: c.signature, publicKey
    }))
  const anchors = zones.map((z) => {
    const s = states.get(z)!
    return { zone: z, firstSeq: s.nextSeq, prevMac: s.prevMac, frontier: s.frontier }
  })
  return { checkpoints, anchors, states }
}

const track = (runs: Array<ZoneRun>, records: ReadonlyArray<ExportRecord>) => {
  for (const r of records) {
    let run = runs.at(-1)
    if (run === undefined || run.zone !== r.zone) {
      run = { zone: r.zone, leaves: [], lastSeq: r.seq, lastMac: r.mac }
      runs.push(run)
    }
    run.leaves.push(r.leafHash)
    run.lastSeq = r.seq
    run.lastMac = r.mac
  }
}

/** The window's whole content at once (small windows, the benchmark's ceiling). */
export const windowContent = async (db: Kysely<any>, start: Date, end: Date, publicKey: string): Promise<{ content: WindowContent; states: Map<string, ChainState> }> => {
  const records: Array<ExportRecord> = []
  for await (const chunk of windowChunks(db, start, end)) records.push(...chunk)
  const runs: Array<ZoneRun> = []
  track(runs, records)
  const { checkpoints, anchors, states } = await windowTail(db, runs, publicKey)
  return { content: { records, checkpoints, anchors }, states }
}

const exportWindow = async (deps: ExportDeps, lease: Lease, start: Date, end: Date) => {
  const db = deps.database.db
  const key = windowKey(start)
  // records become Arrow batches chunk by chunk; the checkpoints and anchors follow in a last batch
  const batches: Array<RecordBatch> = []
  const runs: Array<ZoneRun> = []
  let count = 0
  for await (const chunk of windowChunks(db, start, end)) {
    if (chunk.length === 0) continue
    track(runs, chunk)
    count += chunk.length
    batches.push(...windowTable({ records: chunk, checkpoints: [], anchors: [] }).batches)
  }
  const { checkpoints, anchors, states } = await windowTail(db, runs, deps.signer.publicKeyHex)
  let written = false
  if (count > 0) {
    batches.push(...windowTable({ records: [], checkpoints, anchors }).batches)
    written = await putOnce(deps.s3, deps.bucket, key, toParquet(new Table(batches)))
  }
  // the chains' state after this window, and the watermark, in one fenced transaction
  const moved = await db.transaction().execute(async (tx) => {
    for (const run of runs) {
      const frontier = append(states.get(run.zone)!.frontier, run.leaves)
      await sql`
        insert into audit_export_zones (zone, next_seq, prev_mac, frontier) values (${run.zone}, ${run.lastSeq + 1}, ${run.lastMac}, ${encodeFrontier(frontier)})
        on conflict (zone) do update set next_seq = excluded.next_seq, prev_mac = excluded.prev_mac, frontier = excluded.frontier`.execute(tx)
    }
    const r = await sql`
      update audit_export_state set next_window = ${end.toISOString()}::timestamptz
      where id = 1 and next_window = ${start.toISOString()}::timestamptz
        and exists (select 1 from relay_leases where producer = ${EXPORT_LEASE} and holder = ${deps.holder}
          and epoch = ${lease.epoch.toString()}::bigint and expires_at > now())`.execute(tx)
    if (Number(r.numAffectedRows ?? 0) !== 1) throw new LostLease()
    return true
  })
  return { key, records: count, written: written && moved }
}

/** PUT unless the key exists; an existing object must hold the same bytes (else it is refused, never overwritten). */
const putOnce = async (s3: S3Client, bucket: string, key: string, body: Uint8Array): Promise<boolean> => {
  const md5 = createHash("md5").update(body).digest("hex")
  const existing = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key })).catch((e: { $metadata?: { httpStatusCode?: number }; name?: string }) => {
    if (e.$metadata?.httpStatusCode === 404 || e.name === "NotFound") return undefined
    throw e
  })
  if (existing !== undefined) {
    if (existing.ETag?.replaceAll("\"", "") === md5) return false
    throw new Error(`s3://${bucket}/${key} exists with other content; it is never overwritten`)
  }
  try {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, IfNoneMatch: "*", ContentMD5: Buffer.from(md5, "hex").toString("base64") }))
  } catch (e) {
    // written meanwhile by another exporter (a deposed leader): the check above decides again next run
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 412) return false
    throw e
  }
  return true
}

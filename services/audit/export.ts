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
import { type RecordColumns, recordsTable, toParquet, type VarColumn, windowTable } from "./parquet.ts"
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
const ISO = (column: string) => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`

/** The variable-width columns, in the order of the query, as SQL giving each value's bytes (text as its UTF-8). */
const VARIABLE = {
  zone: "textsend(zone)", id: "textsend(id)", recorded_at: `textsend(${ISO("recorded_at")})`, occurred_at: `textsend(${ISO("occurred_at")})`,
  source: "textsend(source)", kind: "textsend(kind)", decision: "textsend(decision)", request_id: "textsend(request_id)",
  session_id: "textsend(session_id)", client_id: "textsend(client_id)", jti: "textsend(jti)",
  canonical: "canonical", prev_mac: "prev_mac", mac: "mac", leaf_hash: "leaf_hash"
} as const
type Variable = keyof typeof VARIABLE

/**
 * One chunk as one row of Postgres aggregates: per column, the values' bytes back to back and
 * their lengths as big-endian int32 (-1 for null), and the seqs as big-endian int64, each
 * base64 (decoded natively). A million rows of sixteen fields each, parsed into strings and
 * Buffers one by one, cost three times what writing the Parquet file does; this way the
 * per-record work is Postgres's, and JS touches a few dozen buffers per chunk.
 * The aggregates read the ordered subquery's rows in its order (one Agg node advances all of
 * them per input row, so the columns stay aligned); the reader checks that order anyway.
 */
const aggregates = sql.raw(Object.entries(VARIABLE).map(([k, e]) =>
  `encode(string_agg(${e}, ''), 'base64') as ${k}_d, encode(string_agg(coalesce(int4send(octet_length(${e})), decode('ffffffff', 'hex')), ''), 'base64') as ${k}_l`
).join(",\n  "))

const fromBase64 = (s: string | null) => (s === null ? Buffer.alloc(0) : Buffer.from(s, "base64"))

/** Big-endian 4- or 8-byte words as a native (little-endian) typed array over the same memory when aligned. */
const words = <T>(b: Buffer, width: 4 | 8, make: (buf: ArrayBuffer, offset: number, n: number) => T): T => {
  const own = b.byteOffset % width === 0 ? b : Buffer.from(b)
  if (width === 4) own.swap32()
  else own.swap64()
  return make(own.buffer as ArrayBuffer, own.byteOffset, own.length / width)
}

const variableColumn = (data: Buffer, lengths: Int32Array): VarColumn => {
  const n = lengths.length
  const valueOffsets = new Int32Array(n + 1)
  const nullBitmap = new Uint8Array((n + 7) >> 3)
  let at = 0
  let nullCount = 0
  for (let i = 0; i < n; i++) {
    const len = lengths[i]!
    if (len < 0) nullCount++
    else {
      at += len
      nullBitmap[i >> 3]! |= 1 << (i & 7)
    }
    valueOffsets[i + 1] = at
  }
  if (at !== data.length) throw new Error(`export: a column's lengths add up to ${at} bytes, its data holds ${data.length}`)
  return { nullCount, nullBitmap, valueOffsets, data }
}

const CHUNK = 25_000

/**
 * The window's records in (zone, seq) order as columns, a chunk at a time; the next chunk is
 * asked for while the caller turns this one into Arrow (Postgres and this process work at once).
 */
export async function* windowColumns(db: Kysely<any>, start: Date, end: Date, size = CHUNK): AsyncGenerator<RecordColumns> {
  type Row = { n: number; seq: string | null } & Record<`${Variable}_${"d" | "l"}`, string | null>
  // (zone, seq) > ('', 0) holds for every row: zone ids are never empty
  const read = (zone: string, seq: bigint) =>
    sql<Row>`
      select count(*)::int as n, encode(string_agg(int8send(seq), ''), 'base64') as seq, ${aggregates}
      from (select * from audit_records where recorded_at >= ${start.toISOString()}::timestamptz and recorded_at < ${end.toISOString()}::timestamptz
        and (zone, seq) > (${zone}, ${seq.toString()}::bigint) order by zone, seq limit ${size}) t`.execute(db).then((r) => r.rows[0]!)
  let next = read("", 0n)
  for (;;) {
    const row = await next
    const n = row.n
    if (n === 0) return
    const seq = words(fromBase64(row.seq), 8, (b, o, k) => new BigInt64Array(b, o, k))
    const cols = {} as Record<Variable, VarColumn>
    for (const k of Object.keys(VARIABLE) as Array<Variable>) {
      const lengths = words(fromBase64(row[`${k}_l`]), 4, (b, o, k) => new Int32Array(b, o, k))
      if (lengths.length !== n) throw new Error(`export: ${k} has ${lengths.length} values in a chunk of ${n}`)
      cols[k] = variableColumn(fromBase64(row[`${k}_d`]), lengths)
    }
    const lastZone = Buffer.from(cols.zone.data.buffer, cols.zone.data.byteOffset, cols.zone.data.length)
      .toString("utf8", cols.zone.valueOffsets[n - 1], cols.zone.valueOffsets[n])
    if (n === size) next = read(lastZone, seq[n - 1]!)
    yield { length: n, seq, ...cols }
    if (n < size) return
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

/**
 * Follows the chains through a chunk: a run per zone, its leaves, its last seq and MAC. A zone
 * seen again after another, or a seq that does not grow, would be a window out of order: the
 * export stops rather than write a file the verifier rejects.
 */
const track = (runs: Array<ZoneRun>, seen: Set<string>, c: RecordColumns) => {
  const z = c.zone
  const zones = Buffer.from(z.data.buffer, z.data.byteOffset, z.data.length)
  const leaf = c.leaf_hash
  const leaves = Buffer.from(leaf.data.buffer, leaf.data.byteOffset, leaf.data.length)
  const mac = c.mac
  const macs = Buffer.from(mac.data.buffer, mac.data.byteOffset, mac.data.length)
  let run = runs.at(-1)
  let from = -1
  let to = -1
  for (let i = 0; i < c.length; i++) {
    const zs = z.valueOffsets[i]!
    const ze = z.valueOffsets[i + 1]!
    // the zone's bytes against the previous row's (a string only when they differ)
    if (run === undefined || from < 0 || ze - zs !== to - from || zones.compare(zones, from, to, zs, ze) !== 0) {
      const name = zones.toString("utf8", zs, ze)
      if (run === undefined || run.zone !== name) {
        if (seen.has(name)) throw new Error(`export: the window's rows of chain ${name} are not together`)
        seen.add(name)
        run = { zone: name, leaves: [], lastSeq: 0, lastMac: GENESIS }
        runs.push(run)
      }
      from = zs
      to = ze
    }
    const seq = Number(c.seq[i]!)
    if (run.leaves.length > 0 && seq <= run.lastSeq) throw new Error(`export: chain ${run.zone} out of order at seq ${seq}`)
    run.leaves.push(leaves.subarray(leaf.valueOffsets[i]!, leaf.valueOffsets[i + 1]!))
    run.lastSeq = seq
    run.lastMac = macs.subarray(mac.valueOffsets[i]!, mac.valueOffsets[i + 1]!)
  }
}

/**
 * The window as the Arrow table its Parquet file holds (record batches chunk by chunk, the
 * checkpoints and anchors in a last batch), and each chain's part of it.
 */
export const windowArrow = async (db: Kysely<any>, start: Date, end: Date, publicKey: string) => {
  const batches: Array<RecordBatch> = []
  const runs: Array<ZoneRun> = []
  const seen = new Set<string>()
  let count = 0
  for await (const chunk of windowColumns(db, start, end)) {
    track(runs, seen, chunk)
    count += chunk.length
    batches.push(...recordsTable(chunk).batches)
  }
  const { checkpoints, anchors, states } = await windowTail(db, runs, publicKey)
  batches.push(...windowTable({ records: [], checkpoints, anchors }).batches)
  return { table: new Table(batches), count, runs, states }
}

const exportWindow = async (deps: ExportDeps, lease: Lease, start: Date, end: Date) => {
  const db = deps.database.db
  const key = windowKey(start)
  const { table, count, runs, states } = await windowArrow(db, start, end, deps.signer.publicKeyHex)
  let written = false
  if (count > 0) written = await putOnce(deps.s3, deps.bucket, key, toParquet(table))
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

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
import { copyOut, copyTuples } from "../../core/db/copy-out.ts"
import { type DatabaseShape, poolOf } from "../../core/db/database.ts"
import { acquireLease, type Lease, renewLease } from "../../core/relay-lease.ts"
import { GENESIS } from "./chain.ts"
import type { CheckpointSigner } from "./checkpoint.ts"
import { append, decodeFrontier, EMPTY_FRONTIER, encodeFrontier, type Frontier } from "./merkle.ts"
import { type RecordColumns, recordsTable, streamParquet, type VarColumn, windowTable } from "./parquet.ts"
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

// Instants travel as Postgres' own 8 bytes (microseconds since 2000-01-01 UTC) and are
// written out here as ISO text: to_char on two columns was half of Postgres' work on a chunk,
// and Date objects per value cost more than that. Postgres still formats what lies outside
// years 0001–9999 (or is infinite), exactly as before, so the text is to_char's everywhere.
const ISO = (column: string) => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`
const UNUSUAL = (column: string) =>
  `(case when ${column} >= '0001-01-01T00:00:00Z'::timestamptz and ${column} < '10000-01-01T00:00:00Z'::timestamptz then '' else ${ISO(column)} end)`

/**
 * The variable-width columns, in the order of the query, as SQL (text travels as its UTF-8 in
 * a binary COPY); for the instants, the text only where Postgres formats it (else empty).
 */
const VARIABLE = {
  zone: "zone", id: "id", recorded_at: UNUSUAL("recorded_at"), occurred_at: UNUSUAL("occurred_at"),
  source: "source", kind: "kind", decision: "decision", request_id: "request_id",
  session_id: "session_id", client_id: "client_id", jti: "jti",
  canonical: "canonical", prev_mac: "prev_mac", mac: "mac", leaf_hash: "leaf_hash"
} as const
const INSTANTS = ["recorded_at", "occurred_at"] as const

const EPOCH_2000_MS = 946_684_800_000
const DIGITS = (out: Buffer, at: number, v: number, width: number) => {
  for (let i = width - 1; i >= 0; i--) {
    out[at + i] = 48 + (v % 10)
    v = Math.floor(v / 10)
  }
}
/** YYYY-MM-DDTHH:MM:SS.mmmZ of a millisecond instant in years 0001–9999 (the proleptic Gregorian calendar, as Postgres counts). */
export const writeIso = (out: Buffer, at: number, ms: number) => {
  const days = Math.floor(ms / 86_400_000)
  let rest = ms - days * 86_400_000
  // days since 1970-01-01 to a civil date: eras of 400 years, each 146,097 days
  const z = days + 719_468
  const era = Math.floor(z / 146_097)
  const doe = z - era * 146_097
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365)
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100))
  const mp = Math.floor((5 * doy + 2) / 153)
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1
  const month = mp < 10 ? mp + 3 : mp - 9
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0)
  DIGITS(out, at, year, 4)
  out[at + 4] = 45
  DIGITS(out, at + 5, month, 2)
  out[at + 7] = 45
  DIGITS(out, at + 8, day, 2)
  out[at + 10] = 84
  DIGITS(out, at + 11, Math.floor(rest / 3_600_000), 2)
  rest %= 3_600_000
  out[at + 13] = 58
  DIGITS(out, at + 14, Math.floor(rest / 60_000), 2)
  rest %= 60_000
  out[at + 16] = 58
  DIGITS(out, at + 17, Math.floor(rest / 1000), 2)
  out[at + 19] = 46
  DIGITS(out, at + 20, rest % 1000, 3)
  out[at + 23] = 90
}

/** Whole milliseconds of a microsecond count, rounded down as to_char's MS is (exact: a Number holds 2^53 µs, under 300 years). */
const millisOf = (us: bigint) => Number(us / 1000n) - (us < 0n && us % 1000n !== 0n ? 1 : 0)

/** An instant column as text: the micros formatted here, or Postgres' own text where it gave one (or null). */
const instantColumn = (micros: BigInt64Array, unusual: VarColumn): VarColumn => {
  const n = micros.length
  const given = Buffer.from(unusual.data.buffer, unusual.data.byteOffset, unusual.data.length)
  const data = Buffer.allocUnsafe(24 * n + given.length)
  const valueOffsets = new Int32Array(n + 1)
  let at = 0
  let lastMicros = 0n
  let lastAt = -1
  for (let i = 0; i < n; i++) {
    const from = unusual.valueOffsets[i]!
    const to = unusual.valueOffsets[i + 1]!
    const valid = (unusual.nullBitmap[i >> 3]! >> (i & 7)) & 1
    if (valid && to === from) {
      const us = micros[i]!
      // a batch shares its recorded_at: the previous text again
      if (lastAt >= 0 && us === lastMicros) data.copy(data, at, lastAt, lastAt + 24)
      else writeIso(data, at, EPOCH_2000_MS + millisOf(us))
      lastMicros = us
      lastAt = at
      at += 24
    } else if (valid) at += given.copy(data, at, from, to)
    valueOffsets[i + 1] = at
  }
  return { nullCount: unusual.nullCount, nullBitmap: unusual.nullBitmap, valueOffsets, data: data.subarray(0, at) }
}

type Variable = keyof typeof VARIABLE

/**
 * One chunk as one row of Postgres aggregates, read with COPY in binary: per column, the
 * values' bytes back to back and an int4[] of their lengths (null for null); the seqs and
 * instants as their 8 bytes each. A million rows of sixteen fields each, parsed one by one into
 * strings and Buffers (bytea as hex), cost three times what writing the Parquet file does;
 * this way JS touches a few buffers per chunk and nothing is encoded on the way. (Per-row
 * functions such as textsend or int4send cost Postgres an allocation each: aggregates only.)
 * The aggregates read the ordered subquery's rows in its order (one Agg node advances all of
 * them per input row, so the columns stay aligned); the reader checks that order anyway.
 */
const chunkCopy = (start: Date, end: Date, part: Part) => {
  const names = Object.keys(VARIABLE) as Array<Variable>
  // COPY takes no parameters: the literals are timestamps and numbers formatted here, and a chain name quoted
  const literal = (v: string) => `'${v.replaceAll("'", "''")}'`
  return `copy (
    select count(*)::int4, string_agg(int8send(seq), ''), ${names.map((k) => `string_agg(${VARIABLE[k]}, '')`).join(", ")},
      ${names.map((k) => `array_agg(octet_length(${VARIABLE[k]}))`).join(", ")},
      ${INSTANTS.map((k) => `string_agg(timestamptz_send(${k}), '')`).join(", ")}
    from (select * from audit_records where zone = ${literal(part.zone)} and seq >= ${part.from}::bigint and seq <= ${part.to}::bigint
      and recorded_at >= ${literal(start.toISOString())}::timestamptz and recorded_at < ${literal(end.toISOString())}::timestamptz
      order by seq) t
  ) to stdout (format binary)`
}

/** A chunk of the window: one chain's records with seqs in [from, to]. */
interface Part {
  readonly zone: string
  readonly from: bigint
  readonly to: bigint
}

/** Big-endian 4- or 8-byte words as a native (little-endian) typed array, over a copy of the bytes. */
const int32s = (b: Buffer | null) => {
  const own = Buffer.from(b ?? Buffer.alloc(0))
  own.swap32()
  return new Int32Array(own.buffer, own.byteOffset, own.length / 4)
}
const int64s = (b: Buffer | null) => {
  const own = Buffer.from(b ?? Buffer.alloc(0))
  own.swap64()
  return new BigInt64Array(own.buffer, own.byteOffset, own.length / 8)
}

/**
 * The lengths in a binary int4[] (n elements, one dimension): after a 20-byte header, each
 * element is its length word and its value, or the word -1 alone for a null.
 */
const lengthsOf = (array: Buffer | null, n: number): Int32Array => {
  const out = new Int32Array(n)
  if (n === 0) return out
  const w = int32s(array)
  if (w[0] !== 1 || w[3] !== n) throw new Error(`export: a lengths array that is not ${n} int4s`)
  let at = 5
  for (let i = 0; i < n; i++) {
    if (w[at] === -1) {
      out[i] = -1
      at += 1
    } else {
      out[i] = w[at + 1]!
      at += 2
    }
  }
  if (at !== w.length) throw new Error(`export: a lengths array of ${w.length} words for ${n} int4s`)
  return out
}

/** A column of n rows from its values' bytes back to back and their lengths (-1 for null). */
const variableColumn = (data: Buffer, lengths: Int32Array, n: number): VarColumn => {
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

const CHUNK = 10_000
/** Chunks read at once: Postgres builds two on the two cores while this process lays out the one before. */
const AHEAD = 2

/** The window's parts: each chain's seq range in it (from the primary key's index alone), cut every `size` seqs. */
const windowParts = async (db: Kysely<any>, start: Date, end: Date, size: number): Promise<Array<Part>> => {
  const { rows } = await sql<{ zone: string; lo: string; hi: string }>`
    select zone, min(seq) as lo, max(seq) as hi from audit_records
    where recorded_at >= ${start.toISOString()}::timestamptz and recorded_at < ${end.toISOString()}::timestamptz
    group by zone order by zone`.execute(db)
  const parts: Array<Part> = []
  const step = BigInt(size)
  for (const r of rows) {
    const hi = BigInt(r.hi)
    for (let from = BigInt(r.lo); from <= hi; from += step) parts.push({ zone: r.zone, from, to: from + step - 1n < hi ? from + step - 1n : hi })
  }
  return parts
}

/**
 * The window's records in (zone, seq) order as columns, a chunk at a time; the next chunks
 * are read while the caller turns this one into Arrow.
 */
export async function* windowColumns(db: Kysely<any>, start: Date, end: Date, parts: ReadonlyArray<Part>): AsyncGenerator<RecordColumns> {
  const pool = poolOf(db)
  if (pool === undefined) throw new Error("export: the database handle has no pg pool (made by makeKysely) to COPY from")
  const names = Object.keys(VARIABLE) as Array<Variable>
  const read = (part: Part) => copyOut(pool, chunkCopy(start, end, part)).then((b) => copyTuples(b)[0]!)
  const pending = parts.slice(0, AHEAD).map(read)
  // a read that fails while an earlier one is awaited must not count as unhandled: it is awaited in turn
  for (const p of pending) p.catch(() => undefined)
  for (let i = 0; i < parts.length; i++) {
    const row = await pending.shift()!
    if (i + AHEAD < parts.length) {
      const p = read(parts[i + AHEAD]!)
      p.catch(() => undefined)
      pending.push(p)
    }
    const n = row[0]!.readInt32BE(0)
    if (n === 0) continue
    const seq = int64s(row[1]!)
    if (seq.length !== n) throw new Error(`export: a chunk of ${n} rows came with ${seq.length} seqs`)
    const cols = {} as Record<Variable, VarColumn>
    names.forEach((k, j) => {
      cols[k] = variableColumn(row[2 + j] ?? Buffer.alloc(0), lengthsOf(row[2 + names.length + j]!, n), n)
    })
    INSTANTS.forEach((k, j) => {
      const micros = int64s(row[2 + 2 * names.length + j]!)
      if (micros.length !== n) throw new Error(`export: a chunk of ${n} rows came with ${micros.length} ${k} values`)
      cols[k] = instantColumn(micros, cols[k])
    })
    yield { length: n, seq, ...cols }
  }
}

/** Where each chain's part of the window starts and ends, as the chunks go by. */
interface ZoneRun {
  readonly zone: string
  /** The chain's Merkle frontier through its last record so far (leaves appended chunk by chunk, while the next chunks are read). */
  frontier: Frontier
  lastSeq: number
  lastMac: Buffer
}

/** The checkpoints whose tree sizes fall in each chain's part of the window, and where each part starts. */
const windowTail = async (db: Kysely<any>, runs: ReadonlyArray<ZoneRun>, states: Map<string, ChainState>, publicKey: string) => {
  const zones = runs.map((r) => r.zone)
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
const track = (runs: Array<ZoneRun>, seen: Set<string>, states: Map<string, ChainState>, c: RecordColumns) => {
  const z = c.zone
  const zones = Buffer.from(z.data.buffer, z.data.byteOffset, z.data.length)
  const leaf = c.leaf_hash
  const leaves = Buffer.from(leaf.data.buffer, leaf.data.byteOffset, leaf.data.length)
  const mac = c.mac
  const macs = Buffer.from(mac.data.buffer, mac.data.byteOffset, mac.data.length)
  let run = runs.at(-1)
  let pending: Array<Buffer> = []
  const flush = () => {
    if (run !== undefined && pending.length > 0) run.frontier = append(run.frontier, pending)
    pending = []
  }
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
        flush()
        const state = states.get(name)
        if (state === undefined) throw new Error(`export: chain ${name} was not in the window when it was planned`)
        run = { zone: name, frontier: state.frontier, lastSeq: 0, lastMac: GENESIS }
        runs.push(run)
      }
      from = zs
      to = ze
    }
    const seq = Number(c.seq[i]!)
    if (run.lastSeq > 0 && seq <= run.lastSeq) throw new Error(`export: chain ${run.zone} out of order at seq ${seq}`)
    pending.push(leaves.subarray(leaf.valueOffsets[i]!, leaf.valueOffsets[i + 1]!))
    run.lastSeq = seq
    run.lastMac = macs.subarray(mac.valueOffsets[i]!, mac.valueOffsets[i + 1]!)
  }
  flush()
}

/**
 * The window as the Arrow tables its Parquet file holds, in order (records chunk by chunk,
 * then the checkpoints and anchors in a last one); `done` holds the record count and each
 * chain's part of the window once the last table has been taken.
 */
const windowTables = async (db: Kysely<any>, start: Date, end: Date, publicKey: string) => {
  const parts = await windowParts(db, start, end, CHUNK)
  const states = await chainStates(db, [...new Set(parts.map((p) => p.zone))])
  const done = { count: 0, runs: [] as Array<ZoneRun> }
  async function* tables(): AsyncGenerator<Table> {
    const seen = new Set<string>()
    for await (const chunk of windowColumns(db, start, end, parts)) {
      track(done.runs, seen, states, chunk)
      done.count += chunk.length
      yield recordsTable(chunk)
    }
    const { checkpoints, anchors } = await windowTail(db, done.runs, states, publicKey)
    yield windowTable({ records: [], checkpoints, anchors })
  }
  return { empty: parts.length === 0, tables: tables(), done }
}

/** The window as one Arrow table (what the benchmark's ceiling writes), and each chain's part of it. */
export const windowArrow = async (db: Kysely<any>, start: Date, end: Date, publicKey: string) => {
  const { tables, done } = await windowTables(db, start, end, publicKey)
  const batches: Array<RecordBatch> = []
  for await (const t of tables) batches.push(...t.batches)
  return { table: new Table(batches), ...done }
}

const exportWindow = async (deps: ExportDeps, lease: Lease, start: Date, end: Date) => {
  const db = deps.database.db
  const key = windowKey(start)
  const { empty, tables, done } = await windowTables(db, start, end, deps.signer.publicKeyHex)
  let written = false
  // the Parquet file is encoded chunk by chunk while Postgres reads the next chunks
  if (!empty) written = await putOnce(deps.s3, deps.bucket, key, await streamParquet(tables))
  const { count, runs } = done
  // the chains' state after this window, and the watermark, in one fenced transaction
  const moved = await db.transaction().execute(async (tx) => {
    for (const run of runs) {
      const frontier = run.frontier
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

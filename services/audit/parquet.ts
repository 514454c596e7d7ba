// One exported window as one Parquet file, self-contained for verification: its records
// (canonical bytes, seq, previous link, MAC, Merkle leaf hash and the filter columns), the
// signed checkpoints whose tree sizes fall in it, and one anchor per chain (where the chain
// stood when the window began: first seq, previous MAC, Merkle frontier). One table with a
// `row_kind` column ("record" | "checkpoint" | "anchor") keeps it one object per window.
import { Binary, Int64, makeData, makeVector, Table, tableFromIPC, tableToIPC, Utf8 } from "apache-arrow"
import { Compression, readParquet, Table as WasmTable, transformParquetStream, writeParquet, WriterPropertiesBuilder } from "parquet-wasm/node"
import type { Checkpoint } from "./checkpoint.ts"
import type { Columns } from "./entry.ts"
import { decodeFrontier, encodeFrontier } from "./merkle.ts"
import type { Anchor, StoredRow } from "./verify.ts"

export interface ExportRecord extends StoredRow {
  readonly zone: string
  readonly recordedAt: string
  readonly columns: Columns
}

export interface WindowContent {
  readonly records: ReadonlyArray<ExportRecord>
  readonly checkpoints: ReadonlyArray<Checkpoint & { readonly publicKey: string }>
  readonly anchors: ReadonlyArray<Anchor & { readonly zone: string }>
}

// Columns are laid out directly as Arrow buffers (offsets, bytes, validity): Arrow's generic
// builders cost more per value than writing the Parquet file does, on a million records.
const variable = (values: ReadonlyArray<string | Uint8Array | null>) => {
  const n = values.length
  const offsets = new Int32Array(n + 1)
  const valid = new Uint8Array((n + 7) >> 3)
  let size = 0
  let nulls = 0
  for (let i = 0; i < n; i++) {
    const v = values[i]
    if (v === null || v === undefined) nulls++
    else size += typeof v === "string" ? Buffer.byteLength(v) : v.length
  }
  const data = Buffer.allocUnsafe(size)
  let at = 0
  for (let i = 0; i < n; i++) {
    const v = values[i]
    if (v !== null && v !== undefined) {
      at += typeof v === "string" ? data.write(v, at) : (data.set(v, at), v.length)
      valid[i >> 3]! |= 1 << (i & 7)
    }
    offsets[i + 1] = at
  }
  return { length: n, nullCount: nulls, nullBitmap: valid, valueOffsets: offsets, data: new Uint8Array(data.buffer, data.byteOffset, at) }
}
const utf8 = (xs: ReadonlyArray<string | null>) => makeVector(makeData({ type: new Utf8(), ...variable(xs) }))
const bin = (xs: ReadonlyArray<Uint8Array | null>) => makeVector(makeData({ type: new Binary(), ...variable(xs) }))
const int64 = (xs: ReadonlyArray<number>) => makeVector(makeData({ type: new Int64(), length: xs.length, data: BigInt64Array.from(xs, (x) => BigInt(x)) }))

/** The window as an Arrow table (records, then checkpoints, then anchors). */
export const windowTable = (w: WindowContent): Table => {
  const n = w.records.length + w.checkpoints.length + w.anchors.length
  const col = <T>(rec: (r: ExportRecord) => T, cp: (c: WindowContent["checkpoints"][number]) => T, an: (a: WindowContent["anchors"][number]) => T) => {
    const out = new Array<T>(n)
    let i = 0
    for (const r of w.records) out[i++] = rec(r)
    for (const c of w.checkpoints) out[i++] = cp(c)
    for (const a of w.anchors) out[i++] = an(a)
    return out
  }
  const none = () => null
  return new Table({
    row_kind: utf8(col(() => "record", () => "checkpoint", () => "anchor")),
    zone: utf8(col((r) => r.zone, (c) => c.zone, (a) => a.zone)),
    // record: its seq; checkpoint: its tree size; anchor: the first seq of the window's part of the chain
    seq: int64(col((r) => r.seq, (c) => c.treeSize, (a) => a.firstSeq)),
    id: utf8(col((r) => r.id, none, none)),
    recorded_at: utf8(col((r) => r.recordedAt, none, none)),
    occurred_at: utf8(col((r) => r.columns.occurred_at, none, none)),
    source: utf8(col((r) => r.columns.source, none, none)),
    kind: utf8(col((r) => r.columns.kind, none, none)),
    decision: utf8(col((r) => r.columns.decision, none, none)),
    request_id: utf8(col((r) => r.columns.request_id, none, none)),
    session_id: utf8(col((r) => r.columns.session_id, none, none)),
    client_id: utf8(col((r) => r.columns.client_id, none, none)),
    jti: utf8(col((r) => r.columns.jti, none, none)),
    canonical: bin(col((r) => r.canonical, none, none)),
    prev_mac: bin(col((r) => r.prevMac, none, (a) => a.prevMac)),
    mac: bin(col((r) => r.mac, none, none)),
    leaf_hash: bin(col((r) => r.leafHash, none, none)),
    root: bin(col(none, (c) => c.root, none)),
    signed_at: utf8(col(none, (c) => c.signedAt, none)),
    key_id: utf8(col(none, (c) => c.keyId, none)),
    public_key: utf8(col(none, (c) => c.publicKey, none)),
    signature: bin(col(none, (c) => c.signature, none)),
    frontier: bin(col(none, none, (a) => encodeFrontier(a.frontier)))
  })
}

/** A variable-width column laid out as Arrow wants it: validity bits, n + 1 offsets, the values' bytes back to back. */
export interface VarColumn {
  readonly nullCount: number
  readonly nullBitmap: Uint8Array
  readonly valueOffsets: Int32Array
  readonly data: Uint8Array
}

/** A chunk of records as columns (the export's reader hands them over in this form, never as row objects). */
export interface RecordColumns {
  readonly length: number
  readonly seq: BigInt64Array
  readonly zone: VarColumn
  readonly id: VarColumn
  readonly recorded_at: VarColumn
  readonly occurred_at: VarColumn
  readonly source: VarColumn
  readonly kind: VarColumn
  readonly decision: VarColumn
  readonly request_id: VarColumn
  readonly session_id: VarColumn
  readonly client_id: VarColumn
  readonly jti: VarColumn
  readonly canonical: VarColumn
  readonly prev_mac: VarColumn
  readonly mac: VarColumn
  readonly leaf_hash: VarColumn
}

/**
 * A chunk of records as an Arrow table with windowTable's schema, built over the column
 * buffers as they are (no value is looked at): the same bytes windowTable would lay out
 * from row objects, without a million of those objects.
 */
export const recordsTable = (c: RecordColumns): Table => {
  const n = c.length
  const text = (col: VarColumn) => makeVector(makeData({ type: new Utf8(), length: n, ...col }))
  const bytes = (col: VarColumn) => makeVector(makeData({ type: new Binary(), length: n, ...col }))
  const none: VarColumn = { nullCount: n, nullBitmap: new Uint8Array((n + 7) >> 3), valueOffsets: new Int32Array(n + 1), data: new Uint8Array(0) }
  const kind = Buffer.from("record")
  const kinds = Buffer.allocUnsafe(kind.length * n)
  const kindOffsets = new Int32Array(n + 1)
  for (let i = 0; i < n; i++) {
    kind.copy(kinds, i * kind.length)
    kindOffsets[i + 1] = (i + 1) * kind.length
  }
  const all = new Uint8Array((n + 7) >> 3).fill(0xff)
  return new Table({
    row_kind: text({ nullCount: 0, nullBitmap: all, valueOffsets: kindOffsets, data: kinds }),
    zone: text(c.zone),
    seq: makeVector(makeData({ type: new Int64(), length: n, data: c.seq })),
    id: text(c.id),
    recorded_at: text(c.recorded_at),
    occurred_at: text(c.occurred_at),
    source: text(c.source),
    kind: text(c.kind),
    decision: text(c.decision),
    request_id: text(c.request_id),
    session_id: text(c.session_id),
    client_id: text(c.client_id),
    jti: text(c.jti),
    canonical: bytes(c.canonical),
    prev_mac: bytes(c.prev_mac),
    mac: bytes(c.mac),
    leaf_hash: bytes(c.leaf_hash),
    root: bytes(none),
    signed_at: text(none),
    key_id: text(none),
    public_key: text(none),
    signature: bytes(none),
    frontier: bytes(none)
  })
}

const writerProperties = () => new WriterPropertiesBuilder().setCompression(Compression.ZSTD).build()
const intoWasm = (table: Table) => WasmTable.fromIPCStream(tableToIPC(table, "stream"))

/** A whole table as one Parquet file (ZSTD). */
export const toParquet = (table: Table): Uint8Array => writeParquet(intoWasm(table), writerProperties())

/**
 * The same file from tables that arrive one after the other (one schema): each is encoded
 * as it comes, so the encoding overlaps whatever produces the next one (the export's reads
 * run in Postgres meanwhile), and no table of the whole window is ever held.
 */
export const streamParquet = async (tables: AsyncIterable<Table>): Promise<Buffer> => {
  const source = tables[Symbol.asyncIterator]()
  const batches = new ReadableStream({
    async pull(controller) {
      const next = await source.next()
      if (next.done) return controller.close()
      const table = intoWasm(next.value)
      for (const batch of table.recordBatches()) controller.enqueue(batch)
      table.free()
    },
    async cancel() {
      await source.return?.()
    }
  }, { highWaterMark: 0 })
  const parts: Array<Uint8Array> = []
  for await (const part of (await transformParquetStream(batches, writerProperties())) as unknown as AsyncIterable<Uint8Array>) parts.push(part)
  return Buffer.concat(parts)
}

const buf = (v: unknown) => (v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : Buffer.alloc(0))
const str = (v: unknown) => (v === null || v === undefined ? null : String(v))

/** Reads a window file back (for the offline verifier). */
export const fromParquet = (bytes: Uint8Array): WindowContent => {
  const table = tableFromIPC(readParquet(bytes).intoIPCStream())
  const records: Array<ExportRecord> = []
  const checkpoints: Array<WindowContent["checkpoints"][number]> = []
  const anchors: Array<WindowContent["anchors"][number]> = []
  const get = (name: string) => table.getChild(name)!
  const cols = Object.fromEntries(table.schema.fields.map((f) => [f.name, get(f.name)]))
  for (let i = 0; i < table.numRows; i++) {
    const kind = cols.row_kind!.get(i) as string
    const zone = cols.zone!.get(i) as string
    const seq = Number(cols.seq!.get(i) as bigint)
    if (kind === "record") {
      records.push({
        zone,
        seq,
        id: cols.id!.get(i) as string,
        recordedAt: cols.recorded_at!.get(i) as string,
        canonical: buf(cols.canonical!.get(i)),
        prevMac: buf(cols.prev_mac!.get(i)),
        mac: buf(cols.mac!.get(i)),
        leafHash: buf(cols.leaf_hash!.get(i)),
        columns: {
          occurred_at: cols.occurred_at!.get(i) as string,
          source: cols.source!.get(i) as string,
          kind: cols.kind!.get(i) as string,
          decision: str(cols.decision!.get(i)),
          request_id: str(cols.request_id!.get(i)),
          session_id: str(cols.session_id!.get(i)),
          client_id: str(cols.client_id!.get(i)),
          jti: str(cols.jti!.get(i))
        }
      })
    } else if (kind === "checkpoint") {
      checkpoints.push({
        zone,
        treeSize: seq,
        root: buf(cols.root!.get(i)),
        signedAt: cols.signed_at!.get(i) as string,
        keyId: cols.key_id!.get(i) as string,
        publicKey: cols.public_key!.get(i) as string,
        signature: buf(cols.signature!.get(i))
      })
    } else {
      anchors.push({ zone, firstSeq: seq, prevMac: buf(cols.prev_mac!.get(i)), frontier: decodeFrontier(seq - 1, buf(cols.frontier!.get(i))) })
    }
  }
  return { records, checkpoints, anchors }
}

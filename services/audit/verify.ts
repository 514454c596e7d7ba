// Verifying one chain from its rows alone, wherever they come from (the database, an
// export's Parquet files): each row's bytes against its leaf hash, MAC and previous link,
// its columns against its bytes, the seqs without a gap, the Merkle root at every
// checkpoint size against the signed checkpoint, and no checkpoint past the last row (a
// cut tail). The first thing that fails names the record.
import type { KeyObject } from "node:crypto"
import { chainMac, GENESIS, sameMac } from "./chain.ts"
import { type Checkpoint, verifyCheckpoint } from "./checkpoint.ts"
import { columnsOf, type Columns, type Entry } from "./entry.ts"
import { EMPTY_FRONTIER, type Frontier, frontierRoot, leafHash, nodeHash } from "./merkle.ts"

export interface StoredRow {
  readonly seq: number
  readonly id: string
  readonly canonical: Buffer
  readonly prevMac: Buffer
  readonly mac: Buffer
  readonly leafHash: Buffer
  /** The stored filter columns, when the source has them (compared with the bytes). */
  readonly columns?: Columns
  /** occurred_at as epoch milliseconds, when the source read it so (compared instead of the column's text). */
  readonly occurredMs?: number
}

/** Where a chain starts when retention dropped its beginning. */
export interface Anchor {
  readonly firstSeq: number
  readonly prevMac: Buffer
  readonly frontier: Frontier
}

export interface VerifyInput {
  readonly chain: string
  readonly rows?: AsyncIterable<StoredRow> | Iterable<StoredRow>
  /** The rows a page at a time (the database reader): fewer awaits on the hot path. */
  readonly pages?: AsyncIterable<ReadonlyArray<StoredRow>>
  readonly checkpoints: ReadonlyArray<Checkpoint>
  readonly anchor?: Anchor | undefined
  /** AUDIT_HMAC_KEY: without it the MACs are not checked (the links and the Merkle roots still are). */
  readonly hmacKey?: KeyObject | undefined
  /** The checkpoint key's public half: without it signatures are not checked. */
  readonly publicKey?: KeyObject | undefined
  readonly onProgress?: (records: number) => void
}

export interface FirstBad {
  readonly seq: number
  readonly id: string | null
  readonly reason: string
}

export interface VerifyReport {
  readonly chain: string
  readonly ok: boolean
  readonly records: number
  readonly firstSeq: number
  readonly lastSeq: number
  readonly checkpointsVerified: number
  readonly macsChecked: boolean
  readonly signaturesChecked: boolean
  readonly firstBad?: FirstBad
  readonly root: string
  /** Where a later round can continue from (what was verified so far, as an anchor). */
  readonly end: Anchor
}

const KEYS = ["source", "kind", "decision", "request_id", "session_id", "client_id", "jti"] as const

const differingColumn = (fromBytes: Columns, row: StoredRow) => {
  const stored = row.columns!
  for (const k of KEYS) if (fromBytes[k] !== stored[k]) return k
  const ms = row.occurredMs ?? Date.parse(stored.occurred_at)
  return Date.parse(fromBytes.occurred_at) === ms ? undefined : "occurred_at"
}

/** What a row holds about itself, checked without the rows around it (so pages can be checked on another thread). */
export interface ContentFault {
  /** `leaf` faults come before the link check in the order a row is judged, `content` ones after it. */
  readonly stage: "leaf" | "content"
  readonly reason: string
}

export const checkContent = (chain: string, row: StoredRow, hmacKey: KeyObject | undefined): ContentFault | undefined => {
  if (!sameMac(leafHash(row.canonical), row.leafHash)) return { stage: "leaf", reason: "its canonical bytes do not match its Merkle leaf hash" }
  // with the stored previous MAC: the link check (done in order) makes it the running one
  if (hmacKey !== undefined && !sameMac(chainMac(hmacKey, chain, row.seq, row.prevMac, row.canonical), row.mac)) {
    return { stage: "content", reason: "its MAC does not match its bytes, position and chain" }
  }
  let entry: Entry
  try {
    entry = JSON.parse(row.canonical.toString("utf8")) as Entry
  } catch {
    return { stage: "content", reason: "its canonical bytes are not JSON" }
  }
  if (entry.chain !== chain || entry.id !== row.id) return { stage: "content", reason: "its bytes name another chain or id" }
  if (row.columns !== undefined) {
    const differs = differingColumn(columnsOf(entry), row)
    if (differs !== undefined) return { stage: "content", reason: `its ${differs} column differs from its bytes` }
  }
  return undefined
}

/** The first faulty row of a page in itself (its index and fault). */
const firstFault = (chain: string, rows: ReadonlyArray<StoredRow>, hmacKey: KeyObject | undefined) => {
  for (let i = 0; i < rows.length; i++) {
    const fault = checkContent(chain, rows[i]!, hmacKey)
    if (fault) return { index: i, fault }
  }
  return undefined
}

export const verifyChain = async (input: VerifyInput): Promise<VerifyReport> => {
  const checkpoints = [...input.checkpoints].sort((a, b) => a.treeSize - b.treeSize)
  let expected = input.anchor?.firstSeq ?? 1
  let prev = input.anchor?.prevMac ?? GENESIS
  // the frontier as a mutable stack on the hot path (merkle.ts's append copies it)
  const stack: Array<Buffer> = [...(input.anchor?.frontier ?? EMPTY_FRONTIER).hashes]
  let size = (input.anchor?.frontier ?? EMPTY_FRONTIER).size
  const current = (): Frontier => ({ size, hashes: [...stack] })
  const firstSeq = expected
  let records = 0
  let verified = 0
  // checkpoints of the dropped prefix cannot be recomputed, except one at exactly its end
  let ci = checkpoints.findIndex((c) => c.treeSize >= expected - 1)
  if (ci < 0) ci = checkpoints.length
  const report = (firstBad?: FirstBad): VerifyReport => ({
    chain: input.chain,
    ok: firstBad === undefined,
    records,
    firstSeq,
    lastSeq: expected - 1,
    checkpointsVerified: verified,
    macsChecked: input.hmacKey !== undefined,
    signaturesChecked: input.publicKey !== undefined,
    ...(firstBad ? { firstBad } : {}),
    root: frontierRoot(current()).toString("hex"),
    end: { firstSeq: expected, prevMac: prev, frontier: current() }
  })
  const checkCheckpoints = (): FirstBad | undefined => {
    while (ci < checkpoints.length && checkpoints[ci]!.treeSize === size) {
      const c = checkpoints[ci]!
      if (c.zone !== input.chain) return { seq: c.treeSize, id: null, reason: `checkpoint at size ${c.treeSize} names chain ${c.zone}` }
      if (input.publicKey !== undefined && !verifyCheckpoint(input.publicKey, c)) {
        return { seq: c.treeSize, id: null, reason: `checkpoint at size ${c.treeSize} has an invalid signature` }
      }
      if (!frontierRoot(current()).equals(c.root)) {
        return { seq: c.treeSize, id: null, reason: `Merkle root over records 1..${c.treeSize} differs from the signed checkpoint` }
      }
      verified++
      ci++
    }
    return undefined
  }
  const atStart = checkCheckpoints()
  if (atStart) return report(atStart)
  // the checks that need the rows before: order, link, the Merkle frontier, checkpoints
  const inOrder = (row: StoredRow, fault: ContentFault | undefined): VerifyReport | undefined => {
    if (row.seq !== expected) {
      return report(row.seq > expected
        ? { seq: expected, id: null, reason: `record ${expected} is missing (the next stored record is ${row.seq}, id ${row.id})` }
        : { seq: row.seq, id: row.id, reason: `record ${row.seq} is out of order or stored twice (expected ${expected})` })
    }
    const bad = (reason: string) => report({ seq: row.seq, id: row.id, reason })
    if (fault?.stage === "leaf") return bad(fault.reason)
    if (!sameMac(row.prevMac, prev)) return bad("its previous link is not the MAC of the record before it")
    if (fault) return bad(fault.reason)
    stack.push(row.leafHash)
    size++
    for (let s = size; (s & 1) === 0; s >>>= 1) {
      const right = stack.pop()!
      stack.push(nodeHash(stack.pop()!, right))
    }
    prev = row.mac
    expected++
    records++
    if (records % 10_000 === 0) input.onProgress?.(records)
    const cp = checkCheckpoints()
    return cp ? report(cp) : undefined
  }
  const page = (rows: ReadonlyArray<StoredRow>) => {
    const found = firstFault(input.chain, rows, input.hmacKey)
    for (let i = 0; i < rows.length; i++) {
      const r = inOrder(rows[i]!, found?.index === i ? found.fault : undefined)
      if (r) return r
    }
    return undefined
  }
  if (input.pages !== undefined) {
    for await (const rows of input.pages) {
      const r = page(rows)
      if (r) return r
    }
  }
  if (input.rows !== undefined) {
    let batch: Array<StoredRow> = []
    for await (const row of input.rows) {
      batch.push(row)
      if (batch.length === 5000) {
        const r = page(batch)
        if (r) return r
        batch = []
      }
    }
    const r = page(batch)
    if (r) return r
  }
  input.onProgress?.(records)
  if (ci < checkpoints.length) {
    const c = checkpoints[ci]!
    return report({
      seq: expected,
      id: null,
      reason: `record ${expected} is missing: the checkpoint signed at ${c.signedAt} covers ${c.treeSize} records, the chain ends at ${expected - 1}`
    })
  }
  return report()
}

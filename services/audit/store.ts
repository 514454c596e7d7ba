// Reading a chain back from Postgres for verification and proofs: rows in seq order (in
// pages, so a chain of millions streams through), its checkpoints and its retention anchor.
import type { KeyObject } from "node:crypto"
import { type Kysely, sql } from "kysely"
import type { Checkpoint } from "./checkpoint.ts"
import { decodeFrontier } from "./merkle.ts"
import { type Anchor, type StoredRow, type VerifyReport, verifyChain } from "./verify.ts"

/** A row of audit_records as node-postgres reads it (bigint seq as text, bytea as Buffer). */
export interface AuditRecordsRow {
  zone: string
  seq: string
  id: string
  recorded_at: Date
  occurred_at: Date
  source: string
  kind: string
  decision: string | null
  request_id: string | null
  session_id: string | null
  client_id: string | null
  jti: string | null
  canonical: Buffer
  prev_mac: Buffer
  mac: Buffer
  leaf_hash: Buffer
}

type RowRecord = Pick<AuditRecordsRow, "seq" | "id" | "canonical" | "prev_mac" | "mac" | "leaf_hash" | "source" | "kind" | "decision"
  | "request_id" | "session_id" | "client_id" | "jti"> & { occurred_ms: number }

const page = async (db: Kysely<any>, chain: string, after: number, size: number) =>
  (await sql<RowRecord>`
    select seq, id, canonical, prev_mac, mac, leaf_hash, floor(extract(epoch from occurred_at) * 1000)::float8 as occurred_ms,
      source, kind, decision, request_id, session_id, client_id, jti
    from audit_records where zone = ${chain} and seq > ${after} order by seq limit ${size}`.execute(db)).rows

const toStored = (r: RowRecord): StoredRow => ({
  seq: Number(r.seq),
  id: r.id,
  canonical: r.canonical,
  prevMac: r.prev_mac,
  mac: r.mac,
  leafHash: r.leaf_hash,
  occurredMs: r.occurred_ms,
  columns: {
    // the verifier compares occurredMs; the text only when someone reads it
    get occurred_at() {
      return new Date(r.occurred_ms).toISOString()
    },
    source: r.source,
    kind: r.kind,
    decision: r.decision,
    request_id: r.request_id,
    session_id: r.session_id,
    client_id: r.client_id,
    jti: r.jti
  }
})

/**
 * A chain's rows from `from` on, a page at a time in seq order. The next page is asked for
 * while the caller works on this one (the read and the hashing overlap).
 */
export async function* chainPages(db: Kysely<any>, chain: string, size = 5000, from = 1): AsyncGenerator<ReadonlyArray<StoredRow>> {
  let next = page(db, chain, from - 1, size)
  for (;;) {
    const rows = await next
    if (rows.length === size) next = page(db, chain, Number(rows[rows.length - 1]!.seq), size)
    yield rows.map(toStored)
    if (rows.length < size) return
  }
}

export async function* chainRows(db: Kysely<any>, chain: string, size = 5000, from = 1): AsyncGenerator<StoredRow> {
  for await (const rows of chainPages(db, chain, size, from)) yield* rows
}

export const loadCheckpoints = async (db: Kysely<any>, chain: string): Promise<Array<Checkpoint>> => {
  const { rows } = await sql<{ zone: string; tree_size: string; root: Buffer; signed_at: string; key_id: string; signature: Buffer }>`
    select zone, tree_size, root, signed_at, key_id, signature from audit_checkpoints where zone = ${chain} order by tree_size`.execute(db)
  return rows.map((r) => ({ zone: r.zone, treeSize: Number(r.tree_size), root: r.root, signedAt: r.signed_at, keyId: r.key_id, signature: r.signature }))
}

export const loadAnchor = async (db: Kysely<any>, chain: string): Promise<Anchor | undefined> => {
  const { rows } = await sql<{ first_seq: string; prev_mac: Buffer; frontier: Buffer }>`
    select first_seq, prev_mac, frontier from audit_chain_anchors where zone = ${chain}`.execute(db)
  const r = rows[0]
  return r ? { firstSeq: Number(r.first_seq), prevMac: r.prev_mac, frontier: decodeFrontier(Number(r.first_seq) - 1, r.frontier) } : undefined
}

/** Every chain that has a head (or rows left). */
export const listChains = async (db: Kysely<any>): Promise<Array<string>> =>
  (await sql<{ zone: string }>`select zone from audit_chain_heads order by zone`.execute(db)).rows.map((r) => r.zone)

export const verifyStoredChain = async (
  db: Kysely<any>,
  chain: string,
  keys: { readonly hmacKey?: KeyObject | undefined; readonly publicKey?: KeyObject | undefined },
  onProgress?: (records: number) => void
): Promise<VerifyReport> =>
  verifyChain({
    chain,
    pages: chainPages(db, chain),
    checkpoints: await loadCheckpoints(db, chain),
    anchor: await loadAnchor(db, chain),
    hmacKey: keys.hmacKey,
    publicKey: keys.publicKey,
    ...(onProgress ? { onProgress } : {})
  })

/** Leaf hashes of records 1..size of a chain (for proofs; undefined if retention dropped some). */
export const leafHashes = async (db: Kysely<any>, chain: string, size: number): Promise<Array<Buffer> | undefined> => {
  const { rows } = await sql<{ seq: string; leaf_hash: Buffer }>`
    select seq, leaf_hash from audit_records where zone = ${chain} and seq <= ${size} order by seq`.execute(db)
  if (rows.length !== size || (rows.length > 0 && Number(rows[0]!.seq) !== 1)) return undefined
  return rows.map((r) => r.leaf_hash)
}

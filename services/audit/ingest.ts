// Appending received entries to their chains. One transaction per chain per batch, under
// that chain's head row locked FOR UPDATE: two replicas never give out the same seq (one
// waits for the other's commit, then reads the head it left), and chains of different
// zones never wait for each other. Deduplication is by record id inside the same lock:
// identical bytes again are a no-op, other bytes under a known id are tampering.
import type { KeyObject } from "node:crypto"
import { type Kysely, sql } from "kysely"
import { chainMac } from "./chain.ts"
import type { CheckpointSigner } from "./checkpoint.ts"
import { AUDIT_CHAIN, canonicalBytes, claimedZone, columnsOf, type Entry, UNVERIFIED } from "./entry.ts"
import { append, decodeFrontier, encodeFrontier, frontierRoot, leafHash } from "./merkle.ts"
import { ensurePartition } from "./partitions.ts"

export interface Incoming {
  readonly origin: Entry["origin"]
  /** Aggregate type of the stream (`audit` for the audit stream). */
  readonly stream: string
  readonly body: Record<string, unknown>
}

export interface Tampered {
  readonly incoming: Incoming
  readonly chain: string
  readonly reason: string
}

export interface IngestResult {
  readonly appended: number
  readonly duplicates: number
  readonly tampered: ReadonlyArray<Tampered>
}

export interface IngestDeps {
  readonly db: Kysely<any>
  readonly key: KeyObject
  readonly signer: CheckpointSigner
  readonly zones: ZoneDirectory
  readonly now: () => Date
  /** A checkpoint is signed whenever a chain crosses a multiple of this many records. */
  readonly checkpointEvery?: number
}

/**
 * Which zones exist, from the api's zone events in the log: a zone id no ZoneCreated names is
 * not a zone, so a record claiming it (forged, or from a misconfigured writer) cannot open a
 * chain of its own. Known zones are cached (a zone id never stops having existed).
 */
export interface ZoneDirectory {
  readonly known: (zones: ReadonlyArray<string>) => Promise<ReadonlySet<string>>
}

export const zoneDirectory = (db: Kysely<any>): ZoneDirectory => {
  const cache = new Set<string>()
  return {
    known: async (zones) => {
      const unknown = [...new Set(zones)].filter((z) => !cache.has(z))
      if (unknown.length > 0) {
        const { rows } = await sql<{ id: string }>`
          select distinct aggregate_id as id from events where aggregate_type = 'zone' and aggregate_id = any(${unknown})`.execute(db)
        for (const r of rows) cache.add(r.id)
      }
      return new Set(zones.filter((z) => cache.has(z)))
    }
  }
}

const chainOf = (i: Incoming, known: ReadonlySet<string>) => {
  const zone = claimedZone(i.origin, i.body)
  if (zone === null) return i.origin === "record" && i.body.source === "audit" ? AUDIT_CHAIN : UNVERIFIED
  return known.has(zone) ? zone : UNVERIFIED
}

interface Prepared {
  readonly incoming: Incoming
  readonly entry: Entry
  readonly canonical: Buffer
  /** The Merkle leaf hash, also the deduplication digest. */
  readonly leaf: Buffer
}

export const ingest = async (deps: IngestDeps, items: ReadonlyArray<Incoming>): Promise<IngestResult> => {
  const claimed = items.map((i) => claimedZone(i.origin, i.body)).filter((z): z is string => z !== null)
  const known = claimed.length === 0 ? new Set<string>() : await deps.zones.known(claimed)
  const byChain = new Map<string, Array<Prepared>>()
  for (const incoming of items) {
    const chain = chainOf(incoming, known)
    const entry: Entry = { v: 1, id: String(incoming.body.id), chain, origin: incoming.origin, stream: incoming.stream, body: incoming.body }
    const canonical = canonicalBytes(entry)
    const list = byChain.get(chain) ?? []
    list.push({ incoming, entry, canonical, leaf: leafHash(canonical) })
    byChain.set(chain, list)
  }
  let appended = 0
  let duplicates = 0
  const tampered: Array<Tampered> = []
  for (const [chain, list] of byChain) {
    const r = await appendToChain(deps, chain, list)
    appended += r.appended
    duplicates += r.duplicates
    tampered.push(...r.tampered)
  }
  return { appended, duplicates, tampered }
}

const appendToChain = async (deps: IngestDeps, chain: string, list: ReadonlyArray<Prepared>): Promise<IngestResult> => {
  const at = deps.now()
  await ensurePartition(deps.db, at)
  return deps.db.transaction().execute(async (tx) => {
    type Head = { seq: string; mac: Buffer; frontier: Buffer; last_recorded_at: Date | string }
    const lockHead = () => sql<Head>`select seq, mac, frontier, last_recorded_at from audit_chain_heads where zone = ${chain} for update`.execute(tx)
    let head = (await lockHead()).rows[0]
    if (head === undefined) {
      await sql`insert into audit_chain_heads (zone) values (${chain}) on conflict do nothing`.execute(tx)
      head = (await lockHead()).rows[0]!
    }
    // claiming the ids is the deduplication: the ones not returned were chained before (or twice in this batch)
    const claimed = new Set((await sql<{ id: string }>`
      insert into audit_record_ids (id, digest)
      select * from unnest(${list.map((p) => p.entry.id)}::text[], ${list.map((p) => p.leaf)}::bytea[])
      on conflict (id) do nothing returning id`.execute(tx)).rows.map((r) => r.id))
    const fresh: Array<Prepared> = []
    const again: Array<Prepared> = []
    for (const p of list) {
      if (claimed.delete(p.entry.id)) fresh.push(p)
      else again.push(p)
    }
    const tampered: Array<Tampered> = []
    let duplicates = 0
    if (again.length > 0) {
      const known = new Map((await sql<{ id: string; digest: Buffer }>`
        select id, digest from audit_record_ids where id = any(${again.map((p) => p.entry.id)})`.execute(tx)).rows.map((r) => [r.id, r.digest]))
      for (const p of again) {
        if (known.get(p.entry.id)?.equals(p.leaf)) duplicates++
        else tampered.push({ incoming: p.incoming, chain, reason: "tamper: a record with this id and different content is already chained" })
      }
    }
    if (fresh.length === 0) return { appended: 0, duplicates, tampered }

    // recorded_at never goes back within a chain: retention then always drops a chain's prefix
    // a new chain's head says '-infinity', which pg hands over as a string
    const last = head.last_recorded_at instanceof Date && Number.isFinite(head.last_recorded_at.getTime()) ? head.last_recorded_at : new Date(0)
    const recordedAt = at.getTime() >= last.getTime() ? at : last
    if (recordedAt !== at) await ensurePartition(tx, recordedAt)
    const before = Number(head.seq)
    let seq = before
    let prev = head.mac
    const n = fresh.length
    const cols = {
      seq: new Array<number>(n), id: new Array<string>(n), occurred: new Array<string>(n), source: new Array<string>(n),
      kind: new Array<string>(n), decision: new Array<string | null>(n), request: new Array<string | null>(n),
      session: new Array<string | null>(n), client: new Array<string | null>(n), jti: new Array<string | null>(n),
      canonical: new Array<Buffer>(n), prev: new Array<Buffer>(n), mac: new Array<Buffer>(n), leaf: new Array<Buffer>(n)
    }
    for (let i = 0; i < n; i++) {
      const p = fresh[i]!
      seq++
      const mac = chainMac(deps.key, chain, seq, prev, p.canonical)
      const c = columnsOf(p.entry)
      cols.seq[i] = seq
      cols.id[i] = p.entry.id
      cols.occurred[i] = c.occurred_at
      cols.source[i] = c.source
      cols.kind[i] = c.kind
      cols.decision[i] = c.decision
      cols.request[i] = c.request_id
      cols.session[i] = c.session_id
      cols.client[i] = c.client_id
      cols.jti[i] = c.jti
      cols.canonical[i] = p.canonical
      cols.prev[i] = prev
      cols.mac[i] = mac
      cols.leaf[i] = p.leaf
      prev = mac
    }
    const frontier = append(decodeFrontier(before, head.frontier), cols.leaf)
    const every = deps.checkpointEvery ?? 1000
    const crossed = Math.floor(seq / every) > Math.floor(before / every)
    if (crossed) await insertCheckpoint(tx, deps.signer, chain, seq, frontierRoot(frontier), recordedAt)
    // the rows and the new head in one statement
    await sql`
      with rows as (
        insert into audit_records (zone, seq, id, recorded_at, occurred_at, source, kind, decision, request_id, session_id, client_id, jti,
          canonical, prev_mac, mac, leaf_hash)
        select ${chain}, s, i, ${recordedAt.toISOString()}::timestamptz, o, src, k, d, r, ses, cl, j, can, pm, m, l
        from unnest(${cols.seq}::bigint[], ${cols.id}::text[], ${cols.occurred}::timestamptz[], ${cols.source}::text[], ${cols.kind}::text[],
          ${cols.decision}::text[], ${cols.request}::text[], ${cols.session}::text[], ${cols.client}::text[], ${cols.jti}::text[],
          ${cols.canonical}::bytea[], ${cols.prev}::bytea[], ${cols.mac}::bytea[], ${cols.leaf}::bytea[])
          as t(s, i, o, src, k, d, r, ses, cl, j, can, pm, m, l))
      update audit_chain_heads set seq = ${seq}, mac = ${prev}, frontier = ${encodeFrontier(frontier)},
        last_recorded_at = ${recordedAt.toISOString()}::timestamptz
        ${crossed ? sql`, checkpointed_size = ${seq}` : sql``}
      where zone = ${chain}`.execute(tx)
    return { appended: n, duplicates, tampered }
  })
}

export const insertCheckpoint = async (db: Kysely<any>, signer: CheckpointSigner, zone: string, treeSize: number, root: Buffer, at: Date) => {
  const c = signer.sign({ zone, treeSize, root, signedAt: at.toISOString() })
  await sql`
    insert into audit_checkpoints (zone, tree_size, root, signed_at, key_id, signature)
    values (${zone}, ${treeSize}, ${root}, ${c.signedAt}, ${c.keyId}, ${c.signature})
    on conflict (zone, tree_size) do nothing`.execute(db)
  return c
}

/**
 * Signs a checkpoint for every chain that grew since its last one (the periodic checkpoint,
 * AUDIT_CHECKPOINT_INTERVAL_S). SKIP LOCKED: a chain being appended to right now is left for
 * the next round rather than waited for.
 */
export const checkpointChains = async (db: Kysely<any>, signer: CheckpointSigner, now: Date): Promise<number> => {
  const { rows } = await sql<{ zone: string }>`select zone from audit_chain_heads where seq > checkpointed_size`.execute(db)
  let signed = 0
  for (const { zone } of rows) {
    await db.transaction().execute(async (tx) => {
      const head = (await sql<{ seq: string; frontier: Buffer; checkpointed_size: string }>`
        select seq, frontier, checkpointed_size from audit_chain_heads where zone = ${zone} and seq > checkpointed_size
        for update skip locked`.execute(tx)).rows[0]
      if (head === undefined) return
      const size = Number(head.seq)
      await insertCheckpoint(tx, signer, zone, size, frontierRoot(decodeFrontier(size, head.frontier)), now)
      await sql`update audit_chain_heads set checkpointed_size = ${size} where zone = ${zone}`.execute(tx)
      signed++
    })
  }
  return signed
}

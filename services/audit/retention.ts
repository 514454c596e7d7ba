// Retention: a partition whose day ended more than AUDIT_RETENTION_DAYS ago is dropped whole,
// oldest first, and only once a signed checkpoint covers every record in it. Before the drop
// each chain's anchor moves past the dropped rows: the first seq left, the MAC before it and
// the Merkle frontier of the dropped prefix, so the remainder still verifies — its links
// from that MAC, its roots from that frontier against the same signed checkpoints.
import { type Kysely, sql } from "kysely"
import { append, decodeFrontier, EMPTY_FRONTIER, encodeFrontier } from "./merkle.ts"
import { listPartitions } from "./partitions.ts"

const DAY_MS = 86_400_000
// one retention pass at a time across replicas (a maintenance job, not the ingest path)
const RETENTION_LOCK = 0x61756469740a

export interface RetentionReport {
  readonly dropped: ReadonlyArray<string>
  /** The oldest expired partition still kept, and why. */
  readonly held?: { readonly partition: string; readonly reason: string }
}

export const applyRetention = async (db: Kysely<any>, now: Date, retentionDays: number): Promise<RetentionReport> => {
  const cutoff = now.getTime() - retentionDays * DAY_MS
  const dropped: Array<string> = []
  for (const p of await listPartitions(db)) {
    if (p.day.getTime() + DAY_MS > cutoff) break
    const held = await db.transaction().execute(async (tx) => {
      const locked = (await sql<{ ok: boolean }>`select pg_try_advisory_xact_lock(${RETENTION_LOCK}) as ok`.execute(tx)).rows[0]!.ok
      if (!locked) return "another replica is applying retention"
      const chains = (await sql<{ zone: string; last: string }>`
        select zone, max(seq)::text as last from ${sql.table(p.name)} group by zone`.execute(tx)).rows
      for (const c of chains) {
        const covered = (await sql`select 1 from audit_checkpoints where zone = ${c.zone} and tree_size >= ${c.last}::bigint limit 1`.execute(tx)).rows
        if (covered.length === 0) return `no signed checkpoint covers record ${c.last} of chain ${c.zone} yet`
      }
      for (const c of chains) {
        const anchor = (await sql<{ first_seq: string; frontier: Buffer }>`
          select first_seq, frontier from audit_chain_anchors where zone = ${c.zone} for update`.execute(tx)).rows[0]
        const firstSeq = anchor ? Number(anchor.first_seq) : 1
        const start = anchor ? decodeFrontier(firstSeq - 1, anchor.frontier) : EMPTY_FRONTIER
        const rows = (await sql<{ seq: string; mac: Buffer; leaf_hash: Buffer }>`
          select seq, mac, leaf_hash from ${sql.table(p.name)} where zone = ${c.zone} order by seq`.execute(tx)).rows
        // recorded_at never goes back in a chain, so the rows dropped are exactly the chain's next prefix
        if (rows.length === 0 || Number(rows[0]!.seq) !== firstSeq || Number(rows.at(-1)!.seq) !== firstSeq + rows.length - 1) {
          return `chain ${c.zone} is not a contiguous prefix in ${p.name}`
        }
        const frontier = append(start, rows.map((r) => r.leaf_hash))
        const last = rows.at(-1)!
        await sql`
          insert into audit_chain_anchors (zone, first_seq, prev_mac, frontier, dropped_through)
          values (${c.zone}, ${Number(last.seq) + 1}, ${last.mac}, ${encodeFrontier(frontier)}, ${new Date(p.day.getTime() + DAY_MS).toISOString()}::timestamptz)
          on conflict (zone) do update set first_seq = excluded.first_seq, prev_mac = excluded.prev_mac, frontier = excluded.frontier,
            dropped_through = excluded.dropped_through`.execute(tx)
      }
      await sql`delete from audit_record_ids i using ${sql.table(p.name)} r where i.id = r.id`.execute(tx)
      await sql`drop table ${sql.table(p.name)}`.execute(tx)
      return undefined
    })
    if (held !== undefined) return { dropped, held: { partition: p.name, reason: held } }
    dropped.push(p.name)
  }
  return { dropped }
}


// Daily partitions of audit_records by recorded_at. A partition must exist before a row of
// its day arrives (there is no default partition: a row caught there would block creating
// the day's partition later), so the ingest asks for its day's partition before each batch
// and the maintenance loop creates the coming days ahead.
import { type Kysely, sql } from "kysely"

const DAY_MS = 86_400_000

export const dayOf = (t: Date) => new Date(Math.floor(t.getTime() / DAY_MS) * DAY_MS)
export const partitionName = (day: Date) => `audit_records_p${day.toISOString().slice(0, 10).replaceAll("-", "")}`

/** The day a partition name stands for (undefined for another table). */
export const dayOfPartition = (name: string): Date | undefined => {
  const m = /^audit_records_p(\d{4})(\d{2})(\d{2})$/.exec(name)
  return m ? new Date(`${m[1]}-${m[2]}-${m[3]}T00:00:00.000Z`) : undefined
}

const created = new Set<string>()

/** Creates the partition holding `at`, once per process (idempotent across replicas). */
export const ensurePartition = async (db: Kysely<any>, at: Date): Promise<void> => {
  const day = dayOf(at)
  const name = partitionName(day)
  if (created.has(name)) return
  const next = new Date(day.getTime() + DAY_MS)
  try {
    await sql`create table if not exists ${sql.table(name)} partition of audit_records
      for values from (${sql.lit(day.toISOString())}) to (${sql.lit(next.toISOString())})`.execute(db)
  } catch (e) {
    // two replicas creating the same day at once: the loser's catalog insert collides
    const code = (e as { code?: string }).code
    if (code !== "42P07" && code !== "23505") throw e
  }
  created.add(name)
}

/** Today and the next `days` days. */
export const ensureAhead = async (db: Kysely<any>, now: Date, days = 3) => {
  for (let i = 0; i <= days; i++) await ensurePartition(db, new Date(now.getTime() + i * DAY_MS))
}

/** The partitions that exist, oldest first. */
export const listPartitions = async (db: Kysely<any>): Promise<Array<{ name: string; day: Date }>> => {
  const { rows } = await sql<{ name: string }>`
    select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
    join pg_class p on p.oid = i.inhparent where p.relname = 'audit_records' order by c.relname`.execute(db)
  return rows.flatMap((r) => {
    const day = dayOfPartition(r.name)
    return day ? [{ name: r.name, day }] : []
  })
}

/** Forgets what this process created (a test that drops partitions under it). */
export const forgetPartitions = () => created.clear()

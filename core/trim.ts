// Stream trimming that never drops an entry some group has not acknowledged. Postgres
// keeps the full history; a stream only needs what its groups still have to read. The
// cut is the oldest of: the age limit, each group's oldest pending entry, and the entry
// after each group's last delivered one (undelivered entries are not acknowledged yet).
import type { Redis } from "ioredis"

const parseId = (id: string): [bigint, bigint] => {
  const [ms, seq] = id.split("-")
  return [BigInt(ms ?? "0"), BigInt(seq ?? "0")]
}

export const compareIds = (a: string, b: string) => {
  const [am, as] = parseId(a)
  const [bm, bs] = parseId(b)
  return am === bm ? (as === bs ? 0 : as < bs ? -1 : 1) : am < bm ? -1 : 1
}

const nextId = (id: string) => {
  const [ms, seq] = parseId(id)
  return `${ms}-${seq + 1n}`
}

const asRecord = (flat: Array<unknown>) => {
  const out: Record<string, unknown> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) out[String(flat[i])] = flat[i + 1]
  return out
}

/** The smallest id every group has acknowledged everything below; undefined when no group exists. */
export const ackedBoundary = async (redis: Redis, stream: string): Promise<string | undefined> => {
  const groups = ((await redis.xinfo("GROUPS", stream)) as Array<Array<unknown>>).map(asRecord)
  if (groups.length === 0) return undefined
  let boundary: string | undefined
  for (const g of groups) {
    const name = String(g.name)
    const summary = (await redis.xpending(stream, name)) as [number, string | null, string | null, unknown]
    const groupBoundary = summary[0] > 0 && summary[1] ? summary[1] : nextId(String(g["last-delivered-id"]))
    if (boundary === undefined || compareIds(groupBoundary, boundary) < 0) boundary = groupBoundary
  }
  return boundary
}

/**
 * Trims entries older than `maxAgeMs`, but only those every group has acknowledged. A
 * stream without groups is trimmed by age alone (no reader depends on it). Returns the
 * number of entries removed.
 */
export const trimStream = async (redis: Redis, stream: string, maxAgeMs: number, now = Date.now()): Promise<number> => {
  if ((await redis.exists(stream)) === 0) return 0
  const byAge = `${Math.max(0, now - maxAgeMs)}-0`
  const acked = await ackedBoundary(redis, stream)
  const cut = acked !== undefined && compareIds(acked, byAge) < 0 ? acked : byAge
  return Number(await redis.xtrim(stream, "MINID", cut))
}

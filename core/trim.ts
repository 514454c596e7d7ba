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

/** A flat Redis reply ([field, value, …], as XINFO answers) as a record. */
export const asRecord = (flat: Array<unknown>) => {
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

/** A group none of whose consumers has read for this long belongs to replicas that are gone. */
export const DEAD_GROUP_IDLE_MS = 6 * 3_600_000

/**
 * Destroys the groups whose consumers have all been idle longer than `idleMs`: a group left
 * by replicas that are gone would otherwise pin trimming for ever. A consumer that comes back
 * recreates its group and catches up from the log (see consumer-layer.ts); a group with no
 * consumer yet (just created) is left alone.
 */
export const removeDeadGroups = async (redis: Redis, stream: string, idleMs: number): Promise<Array<string>> => {
  const removed: Array<string> = []
  const groups = ((await redis.xinfo("GROUPS", stream)) as Array<Array<unknown>>).map(asRecord)
  for (const g of groups) {
    const name = String(g.name)
    const consumers = ((await redis.xinfo("CONSUMERS", stream, name)) as Array<Array<unknown>>).map(asRecord)
    if (consumers.length > 0 && consumers.every((c) => Number(c.idle) > idleMs)) {
      await redis.xgroup("DESTROY", stream, name)
      removed.push(name)
    }
  }
  return removed
}

/**
 * Trims entries older than `maxAgeMs`, but only those every live group has acknowledged
 * (dead groups are removed first, see removeDeadGroups). A stream without groups is trimmed
 * by age alone (no reader depends on it). Returns the number of entries removed.
 */
export const trimStream = async (
  redis: Redis,
  stream: string,
  maxAgeMs: number,
  now = Date.now(),
  deadGroupMs = DEAD_GROUP_IDLE_MS
): Promise<number> => {
  if ((await redis.exists(stream)) === 0) return 0
  await removeDeadGroups(redis, stream, deadGroupMs)
  const byAge = `${Math.max(0, now - maxAgeMs)}-0`
  const acked = await ackedBoundary(redis, stream)
  const cut = acked !== undefined && compareIds(acked, byAge) < 0 ? acked : byAge
  return Number(await redis.xtrim(stream, "MINID", cut))
}

// The consumer's health as /ready and /metrics see it: how far behind the audit group is
// on each stream (entries not yet delivered) and how old its oldest unacknowledged entry
// is (a replica stuck on a batch, or Postgres away). Measured by the background loop,
// read by the ready check: the route never queries Redis itself.
import type { Redis } from "ioredis"
import { asRecord } from "../../core/trim.ts"

export interface ConsumerHealth {
  lag: number
  oldestPendingMs: number
  deadLetters: number
  /** When the loop last measured (0: never). */
  measuredAt: number
  running: boolean
}

export const health: ConsumerHealth = { lag: 0, oldestPendingMs: 0, deadLetters: 0, measuredAt: 0, running: false }

export const measure = async (redis: Redis, group: string, streams: ReadonlyArray<string>, dlq: (s: string) => string) => {
  const [sec, usec] = await redis.time()
  const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000)
  let lag = 0
  let oldest = 0
  let dead = 0
  for (const stream of streams) {
    dead += await redis.xlen(dlq(stream))
    if ((await redis.exists(stream)) === 0) continue
    const groups = ((await redis.xinfo("GROUPS", stream)) as Array<Array<unknown>>).map(asRecord)
    const g = groups.find((x) => x.name === group)
    if (g === undefined) continue
    lag += Number(g.lag ?? 0)
    const [pending, first] = (await redis.xpending(stream, group)) as [number, string | null, unknown, unknown]
    if (pending > 0 && first) oldest = Math.max(oldest, nowMs - Number(first.split("-")[0]))
  }
  return { lag, oldestPendingMs: oldest, deadLetters: dead }
}

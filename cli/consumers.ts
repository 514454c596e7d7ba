// `caracal consumers lag`: per stream and consumer group, how far behind the group is
// (entries not yet delivered), what it holds unacknowledged, and for how long.
import type { Redis } from "ioredis"
import { discoverStreams, type Entry } from "./events.ts"
import { type Column, type Out, printRows, UsageError } from "./output.ts"

export interface GroupLag {
  readonly stream: string
  readonly group: string
  readonly consumers: number
  readonly pending: number
  /** Entries not yet delivered to the group. */
  readonly lag: number
  /** Age of the oldest delivered-but-unacknowledged entry, by its id's timestamp; null when none is pending. */
  readonly oldestPendingMs: number | null
  readonly lastDeliveredId: string
}

const asRecord = (flat: ReadonlyArray<unknown>) => {
  const out: Record<string, unknown> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) out[String(flat[i])] = flat[i + 1]
  return out
}

const idMs = (id: string) => Number(id.split("-")[0])

/**
 * Counts the entries after `lastDelivered`. Redis 7 reports this as `lag`, but only while
 * it can: after an XDEL or XTRIM inside the undelivered range (and on Redis 6) it is null.
 */
export const countAfter = async (redis: Redis, stream: string, lastDelivered: string): Promise<number> => {
  let n = 0
  let start = `(${lastDelivered}`
  for (;;) {
    const page = (await redis.xrange(stream, start, "+", "COUNT", 1000)) as Array<Entry>
    n += page.length
    if (page.length < 1000) return n
    start = `(${page.at(-1)![0]}`
  }
}

const groupsOf = async (redis: Redis, stream: string) => {
  try {
    return ((await redis.xinfo("GROUPS", stream)) as Array<Array<unknown>>).map(asRecord)
  } catch (e) {
    if (e instanceof Error && /no such key/i.test(e.message)) throw new UsageError(`no such stream: ${stream}`)
    throw e
  }
}

export const groupLags = async (redis: Redis, streams: ReadonlyArray<string>): Promise<ReadonlyArray<GroupLag>> => {
  // entry ids carry the Redis server's clock, so ages are measured against that clock, not ours
  const [sec, usec] = await redis.time()
  const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000)
  const out: Array<GroupLag> = []
  for (const stream of streams) {
    for (const g of await groupsOf(redis, stream)) {
      const group = String(g.name)
      const lastDeliveredId = String(g["last-delivered-id"])
      const [pending, oldest] = (await redis.xpending(stream, group)) as [number, string | null, string | null, unknown]
      const reported = g.lag
      out.push({
        stream,
        group,
        consumers: Number(g.consumers),
        pending: Number(pending),
        lag: typeof reported === "number" ? reported : await countAfter(redis, stream, lastDeliveredId),
        oldestPendingMs: Number(pending) > 0 && oldest ? Math.max(0, nowMs - idMs(oldest)) : null,
        lastDeliveredId
      })
    }
  }
  return out.sort((a, b) => a.stream.localeCompare(b.stream) || a.group.localeCompare(b.group))
}

const columns: ReadonlyArray<Column<GroupLag>> = [
  { header: "STREAM", value: (r) => r.stream },
  { header: "GROUP", value: (r) => r.group },
  { header: "CONSUMERS", value: (r) => r.consumers },
  { header: "PENDING", value: (r) => r.pending },
  { header: "LAG", value: (r) => r.lag },
  { header: "OLDEST_PENDING_MS", value: (r) => r.oldestPendingMs },
  { header: "LAST_DELIVERED", value: (r) => r.lastDeliveredId }
]

export const printLag = async (
  deps: { readonly redis: Redis; readonly prefix: string; readonly out: Out },
  opts: { readonly streams: ReadonlyArray<string>; readonly json: boolean }
) => {
  const streams = opts.streams.length > 0 ? opts.streams : await discoverStreams(deps.redis, deps.prefix)
  printRows(deps.out, await groupLags(deps.redis, streams), {
    json: opts.json,
    columns,
    toJson: (r) => r,
    empty: "no consumer groups"
  })
}

// Fenced publishing. A relay publishes only under the leadership epoch it was given with its
// lease (relay-lease.ts). The lease lives in Postgres and the publish happens in Redis, so a
// Postgres check alone cannot stop a leader that stalled (GC, SIGSTOP, a slow network) past
// its lease and then wakes up mid-batch: the check is made where the write happens. A Lua
// script, atomic in Redis, compares the caller's epoch with the highest epoch recorded beside
// the stream and appends only if it is not lower; a successor's first publish raises the
// recorded epoch, and from then on the stale leader's appends to that stream are refused.
import type { Redis } from "ioredis"
import { fenceKey } from "./redis/keys.ts"

// KEYS[1] stream, KEYS[2] its fence; ARGV[1] epoch, then per entry: field count, fields...
// Each XADD's failure is returned, not raised: a script error would drop the entries after it.
const SCRIPT = `
local epoch = tonumber(ARGV[1])
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch < seen then return redis.error_reply('FENCED epoch ' .. ARGV[1] .. ' is behind ' .. seen) end
if epoch > seen then redis.call('SET', KEYS[2], ARGV[1]) end
local out = {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  if type(reply) == 'table' and reply.err then out[#out + 1] = 'ERR ' .. reply.err else out[#out + 1] = reply end
  i = i + n + 1
end
return out
`

type FencedRedis = Redis & {
  fencedXadd(stream: string, fence: string, ...args: Array<string | number>): Promise<Array<string>>
}

const withScript = (redis: Redis): FencedRedis => {
  const r = redis as FencedRedis
  // defineCommand sends EVALSHA and falls back to EVAL once after a server restart
  if (typeof r.fencedXadd !== "function") redis.defineCommand("fencedXadd", { numberOfKeys: 2, lua: SCRIPT })
  return r
}

/** Another leader has published to this stream under a later epoch: this relay has lost its lease. */
export const isFenced = (e: unknown) => e instanceof Error && e.message.startsWith("FENCED")

export interface FencedBatch {
  readonly stream: string
  readonly entries: ReadonlyArray<ReadonlyArray<string>>
}

/**
 * Queues one fenced append per stream on a pipeline; the reply for each is an array of
 * entry ids or "ERR …" strings in entry order, or a FENCED error for the whole stream.
 */
export const queueFenced = (redis: Redis, pipeline: ReturnType<Redis["pipeline"]>, epoch: bigint, batch: FencedBatch) => {
  withScript(redis)
  const args: Array<string> = [epoch.toString()]
  for (const fields of batch.entries) args.push(String(fields.length), ...fields)
  ;(pipeline as unknown as FencedRedis).fencedXadd(batch.stream, fenceKey(batch.stream), ...args)
}

/** Ensures the script command exists on a client (pipelines inherit defined commands). */
export const prepareFence = (redis: Redis) => void withScript(redis)

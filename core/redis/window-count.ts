// A fixed-window counter in Redis (rate limits, failure budgets): the window starts at the
// first count and lasts `windowSeconds`. One script, so one round trip and one command for
// Redis to run: a MULTI of INCR and EXPIRE costs three commands, and on the client side
// ioredis's transaction wrapper cost more CPU per call than the rest of a token exchange's
// Redis work (measured on the sts benchmark).
import type { Redis } from "ioredis"
import { luaScript } from "./script.ts"

// KEYS[1] the counter; ARGV[1] the window in seconds. Answers the count including this one.
// (EXPIRE NX at every count, not only the first: a counter left without a TTL still ends.)
const COUNT = `
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return n`

const countScript = luaScript<number>(COUNT)

/** Counts one more in `key`'s window and answers the count so far (this one included). */
export const countInWindow = (redis: Redis, key: string, windowSeconds: number): Promise<number> => countScript(redis, [key], [windowSeconds])

// The same count over several counters, and when every one is within `limit`, a record
// appended to a stream of this Redis server (in `db`, selected for the append and back) in
// the same script: an outcome that must be counted and recorded costs one round trip. When
// one is spent nothing is recorded: the caller records the refusal itself.
// KEYS[1..n-1] the counters, KEYS[n] the stream; ARGV[1] the window in seconds, ARGV[2] the
// limit, ARGV[3] the stream's db, ARGV[4] this connection's, ARGV[5..] the entry's fields.
const COUNT_AND_RECORD = `
local within = true
for i = 1, #KEYS - 1 do
  local n = redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1], 'NX')
  if n > tonumber(ARGV[2]) then within = false end
end
if not within then return 0 end
redis.call('SELECT', ARGV[3])
redis.call('XADD', KEYS[#KEYS], '*', unpack(ARGV, 5))
redis.call('SELECT', ARGV[4])
return 1`

const countAndRecordScript = luaScript<number>(COUNT_AND_RECORD)

/** Where a record goes when it is written with a count: a stream of the same server, its db, the entry's fields. */
export interface StreamEntry {
  readonly stream: string
  readonly db: number
  readonly fields: ReadonlyArray<string>
}

/**
 * Counts one more in each of `keys` (as countInWindow) and, when all are within `limit`,
 * appends `entry`: true when counted within the limit and recorded, false when one is spent.
 */
export const countAndRecord = async (
  redis: Redis,
  keys: ReadonlyArray<string>,
  windowSeconds: number,
  limit: number,
  entry: StreamEntry
): Promise<boolean> =>
  (await countAndRecordScript(redis, [...keys, entry.stream], [windowSeconds, limit, entry.db, redis.options.db ?? 0, ...entry.fields])) === 1

// A fixed-window counter in Redis (rate limits, failure budgets): the window starts at the
// first count and lasts `windowSeconds`. One script, so one round trip and one command for
// Redis to run: a MULTI of INCR and EXPIRE costs three commands, and on the client side
// ioredis's transaction wrapper cost more CPU per call than the rest of a token exchange's
// Redis work (measured on the sts benchmark).
import type { Redis } from "ioredis"

// KEYS[1] the counter; ARGV[1] the window in seconds. Answers the count including this one.
// (EXPIRE NX at every count, not only the first: a counter left without a TTL still ends.)
const COUNT = `
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return n`

interface CountingRedis extends Redis {
  caracalWindowCount(key: string, windowSeconds: number): Promise<number>
}

/** Counts one more in `key`'s window and answers the count so far (this one included). */
export const countInWindow = (redis: Redis, key: string, windowSeconds: number): Promise<number> => {
  const r = redis as CountingRedis
  // defineCommand sends EVALSHA and falls back to EVAL once after a server restart
  if (typeof r.caracalWindowCount !== "function") redis.defineCommand("caracalWindowCount", { numberOfKeys: 1, lua: COUNT })
  return r.caracalWindowCount(key, windowSeconds)
}

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

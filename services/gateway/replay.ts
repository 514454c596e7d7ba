// A per-call mandate is single-use. Each replica remembers the jtis it served in a bounded
// LRU (JTI_CACHE_SIZE), which answers a repeat at once; what makes it hold across replicas
// is a Redis SET NX on the jti (db1), kept for the mandate's remaining lifetime. The same
// script counts the request against its (zone, resource, application) budget first, so a
// request refused for its rate does not use up its mandate: one round trip decides both.
// Redis unreachable → the caller refuses (fail closed): a check that cannot run must not pass.
import type { Redis } from "ioredis"

export type Claim = "fresh" | "replay" | "rate_limited"

// KEYS[1] the budget counter, KEYS[2] the jti; ARGV[1] requests per minute, ARGV[2] the jti's ttl (ms)
const CLAIM = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if n > tonumber(ARGV[1]) then return -1 end
if redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'NX') then return 1 end
return 0`

/** A bounded map that forgets its least recently added entries first. */
export class JtiCache {
  private readonly seen = new Map<string, number>()
  private readonly capacity: number
  constructor(capacity: number) {
    this.capacity = capacity
  }

  /** True when this jti was served here and its mandate has not expired yet. */
  has(jti: string, nowMs: number): boolean {
    const exp = this.seen.get(jti)
    return exp !== undefined && exp > nowMs
  }

  add(jti: string, expiresAtMs: number): void {
    this.seen.set(jti, expiresAtMs)
    // Map keeps insertion order: the oldest entry is the first one
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.keys().next().value!)
  }

  get size(): number {
    return this.seen.size
  }
}

export interface ReplayGuard {
  /**
   * Claims the jti for this call, after counting it against `budgetKey`. `expiresAtMs`: the
   * mandate's exp (the claim is kept that long). Rejects when Redis does not answer.
   */
  readonly claim: (jti: string, expiresAtMs: number, budgetKey: string, perMinute: number) => Promise<Claim>
  readonly cache: JtiCache
}

interface ClaimingRedis extends Redis {
  caracalClaim(budget: string, jti: string, perMinute: number, ttlMs: number): Promise<number>
}

export const makeReplayGuard = (limits: Redis, jtiKey: (jti: string) => string, capacity: number, now: () => number = Date.now): ReplayGuard => {
  const redis = limits as ClaimingRedis
  if (typeof redis.caracalClaim !== "function") redis.defineCommand("caracalClaim", { numberOfKeys: 2, lua: CLAIM })
  const cache = new JtiCache(capacity)
  return {
    cache,
    claim: async (jti, expiresAtMs, budgetKey, perMinute) => {
      const t = now()
      if (cache.has(jti, t)) return "replay"
      // the clock tolerance lets a mandate be used a little past exp: keep its claim as long
      const ttl = Math.max(1000, expiresAtMs - t + 10_000)
      const answer = await redis.caracalClaim(budgetKey, jtiKey(jti), perMinute, ttl)
      if (answer === -1) return "rate_limited"
      cache.add(jti, t + ttl)
      return answer === 1 ? "fresh" : "replay"
    }
  }
}

// A per-call mandate is single-use. Each replica remembers the jtis it served in a bounded
// LRU (JTI_CACHE_SIZE), which answers a repeat at once; what makes it hold across replicas
// is a Redis SET NX on the jti (db1), kept for the mandate's remaining lifetime. The same
// script counts the request against its (zone, resource, application) budget first, so a
// request refused for its rate does not use up its mandate: one round trip decides both.
// Redis unreachable → the caller refuses (fail closed): a check that cannot run must not pass.
import type { Redis } from "ioredis"
import { luaScript } from "../../core/redis/script.ts"

export type Claim = "fresh" | "replay" | "rate_limited"

// KEYS[1] the budget counter, KEYS[2] the jti; ARGV[1] requests per minute, ARGV[2] the jti's ttl (ms)
const CLAIM = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if n > tonumber(ARGV[1]) then return -1 end
if redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'NX') then return 1 end
return 0`

// The same, and then the allowed call's audit record, appended to the audit stream in the
// same script (when that stream lives on this Redis): one round trip decides the call and
// records it. A refusal (replay, rate limit) is not recorded here: the caller records it with
// its own append — a second round trip only on the refused path, and one record to build and
// sign per call instead of one per possible outcome. KEYS[3] the audit stream; ARGV[3] its db,
// ARGV[4] this connection's; ARGV[5..] the record's stream fields.
const CLAIM_AND_RECORD = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], 60) end
if n > tonumber(ARGV[1]) then return -1 end
if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[2], 'NX') then return 0 end
redis.call('SELECT', ARGV[3])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
redis.call('SELECT', ARGV[4])
return 1`

/** Where the record of an allowed call goes when it is written with the claim, and its fields. */
export interface RecordWithClaim {
  readonly stream: string
  readonly db: number
  readonly fields: ReadonlyArray<string>
}

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
  /**
   * `claim`, and when the call is fresh, its record appended in the same script (`recorded`).
   * A refusal is never recorded here: the caller records it.
   */
  readonly claimAndRecord: (jti: string, expiresAtMs: number, budgetKey: string, perMinute: number, record: RecordWithClaim) =>
    Promise<{ readonly claim: Claim; readonly recorded: boolean }>
  readonly cache: JtiCache
}

const claimScript = luaScript<number>(CLAIM)
const claimAndRecordScript = luaScript<number>(CLAIM_AND_RECORD)

const outcomeOf = (answer: number): Claim => (answer === -1 ? "rate_limited" : answer === 1 ? "fresh" : "replay")

export const makeReplayGuard = (limits: Redis, jtiKey: (jti: string) => string, capacity: number, now: () => number = Date.now): ReplayGuard => {
  const ownDb = limits.options.db ?? 0
  const cache = new JtiCache(capacity)
  // the clock tolerance lets a mandate be used a little past exp: keep its claim as long
  const ttlOf = (expiresAtMs: number, t: number) => Math.max(1000, expiresAtMs - t + 10_000)
  const remember = (jti: string, claim: Claim, until: number) => {
    if (claim !== "rate_limited") cache.add(jti, until)
  }
  return {
    cache,
    claim: async (jti, expiresAtMs, budgetKey, perMinute) => {
      const t = now()
      if (cache.has(jti, t)) return "replay"
      const ttl = ttlOf(expiresAtMs, t)
      const claim = outcomeOf(await claimScript(limits, [budgetKey, jtiKey(jti)], [perMinute, ttl]))
      remember(jti, claim, t + ttl)
      return claim
    },
    claimAndRecord: async (jti, expiresAtMs, budgetKey, perMinute, record) => {
      const t = now()
      if (cache.has(jti, t)) return { claim: "replay", recorded: false }
      const ttl = ttlOf(expiresAtMs, t)
      const claim = outcomeOf(await claimAndRecordScript(limits, [budgetKey, jtiKey(jti), record.stream], [perMinute, ttl, record.db, ownDb, ...record.fields]))
      remember(jti, claim, t + ttl)
      return { claim, recorded: claim === "fresh" }
    }
  }
}

// The admin credential. Every /v1/* request presents `Authorization: Bearer <ADMIN_TOKEN>`;
// the presented and the expected token are compared as SHA-256 digests with
// timingSafeEqual, so neither the content nor the length of the secret leaks through
// timing. Every failure is the same 401. Failures are counted per client address in Redis
// db1: past the limit in a window, that address gets 429 with Retry-After — for every
// request, valid or not, so that a locked-out guesser learns nothing from the answer.
import { createHash, timingSafeEqual } from "node:crypto"
import type { Redis } from "ioredis"
import type { Keys } from "../../core/redis/keys.ts"
import { countInWindow } from "../../core/redis/window-count.ts"

export const FAILURES_PER_WINDOW = 20
export const WINDOW_SECONDS = 60

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest()

export type AuthOutcome =
  | { readonly ok: true; readonly actorId: string }
  | { readonly ok: false; readonly status: 401 }
  | { readonly ok: false; readonly status: 429; readonly retryAfter: number }

export interface AdminAuth {
  readonly check: (authorization: string | undefined, address: string) => Promise<AuthOutcome>
}

/** The actor recorded in events: an id derived from the token's digest, never the token. */
export const adminActorId = (token: string) => `admin:${createHash("sha256").update(`caracal:admin:${token}`).digest("hex").slice(0, 16)}`

const presented = (authorization: string | undefined): string => {
  const m = /^Bearer ([^\s]+)$/i.exec(authorization ?? "")
  return m?.[1] ?? ""
}

export const makeAdminAuth = (token: string, redis: Redis, keys: Keys): AdminAuth => {
  const expected = digest(token)
  const actorId = adminActorId(token)
  // address text as a key part: IPv6 colons are allowed, anything else is folded
  const keyOf = (address: string) => keys.rateLimit("admin-auth", address.replace(/[^A-Za-z0-9_.:-]/g, "_").slice(0, 64) || "unknown")
  return {
    check: async (authorization, address) => {
      const key = keyOf(address)
      const failures = Number((await redis.get(key)) ?? 0)
      if (failures >= FAILURES_PER_WINDOW) {
        const ttl = await redis.ttl(key)
        return { ok: false, status: 429, retryAfter: ttl > 0 ? ttl : WINDOW_SECONDS }
      }
      if (timingSafeEqual(digest(presented(authorization)), expected)) return { ok: true, actorId }
      // the window starts at the first failure: at most FAILURES_PER_WINDOW failures per window
      const count = await countInWindow(redis, key, WINDOW_SECONDS)
      if (count > FAILURES_PER_WINDOW) {
        return { ok: false, status: 429, retryAfter: WINDOW_SECONDS }
      }
      return { ok: false, status: 401 }
    }
  }
}

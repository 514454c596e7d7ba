// Per-zone JSON Web Key Sets, fetched from `${base}/.well-known/jwks.json?zone_id=<zone>` and
// kept in memory. The zone id comes from a token nobody has verified yet, so every fetch is
// bounded:
//   - a zone whose set answered 404 or held no keys is remembered as unknown for a while
//     (negative cache) and not asked again until then;
//   - concurrent lookups of one zone share a single fetch (single flight);
//   - fetches across all zones draw from one token bucket; when it is empty a zone without
//     usable cached keys cannot be verified now (503), and nothing is ever accepted instead;
//   - an unknown `kid` for a cached zone refetches at most once per cooldown.
// Failures of the key server are `unavailable` outcomes (the caller fails closed with 503);
// "the key server does not know this zone" is `unknownZone` (the token is invalid: 401).
import { createLocalJWKSet, type JSONWebKeySet } from "jose"

export type FetchLike = (url: string, init: RequestInit) => Promise<Response>
/** Picks the key for a token's header from one fetched set (jose's local JWKS). */
export type KeyLookup = ReturnType<typeof createLocalJWKSet>

export interface JwksCacheOptions {
  /** Base URL of the key server; the set of a zone is at `${base}/.well-known/jwks.json?zone_id=`. */
  readonly baseUrl: string
  /** Least time between two fetches of a cached zone's set triggered by an unknown kid. */
  readonly cooldownMs: number
  /** Cached sets are refetched after this age; a stale set is never used. */
  readonly cacheMaxAgeMs: number
  /** How long a zone whose set answered 404 or was empty is answered "unknown" without a fetch. */
  readonly unknownZoneTtlMs: number
  readonly timeoutMs: number
  /** Zones whose key sets are kept; the least recently used is dropped beyond this. */
  readonly maxZones: number
  /** Unknown zones remembered; the oldest is forgotten beyond this. */
  readonly maxUnknownZones: number
  /** Sustained fetches per second across all zones. */
  readonly fetchesPerSecond: number
  /** Fetches allowed in a burst before the rate applies. */
  readonly fetchBurst: number
  readonly fetch: FetchLike
  /** Milliseconds since the epoch. */
  readonly now: () => number
}

export type KeysOutcome =
  | { readonly _tag: "Keys"; readonly keys: KeyLookup }
  | { readonly _tag: "UnknownZone" }
  /**
   * `reason` says why, for the log: never a token, only what the key server or the budget did.
   * Absent when the same reason was logged moments ago (budget refusals come in floods).
   */
  | { readonly _tag: "Unavailable"; readonly description: string; readonly reason?: string }

type FetchOutcome =
  | { readonly _tag: "Fetched"; readonly keys: KeyLookup; readonly kids: ReadonlySet<string> }
  | { readonly _tag: "UnknownZone" }
  | { readonly _tag: "Unavailable"; readonly description: string; readonly reason: string }

interface KnownZone {
  readonly keys: KeyLookup
  readonly kids: ReadonlySet<string>
  readonly fetchedAt: number
  /** The last fetch attempt, successful or not: the cooldown counts from it. */
  attemptedAt: number
}

/** A JWKS is a handful of public keys; anything near this is not one. */
const MAX_JWKS_BYTES = 64 * 1024

/** Token bucket: `burst` tokens, refilled at `perSecond`. */
export const makeTokenBucket = (perSecond: number, burst: number, now: () => number) => {
  let tokens = burst
  let last = now()
  return {
    take: (): boolean => {
      const t = now()
      tokens = Math.min(burst, tokens + (Math.max(0, t - last) / 1000) * perSecond)
      last = t
      if (tokens < 1) return false
      tokens -= 1
      return true
    }
  }
}

const describeCause = (cause: unknown): string => {
  if (!(cause instanceof Error)) return String(cause)
  const inner = (cause as { cause?: unknown }).cause
  const code = inner instanceof Error ? ((inner as { code?: string }).code ?? inner.message) : undefined
  return code === undefined ? `${cause.name}: ${cause.message}` : `${cause.name}: ${cause.message} (${code})`
}

export const makeJwksCache = (options: JwksCacheOptions) => {
  const base = options.baseUrl.replace(/\/+$/, "")
  const known = new Map<string, KnownZone>()
  const unknown = new Map<string, number>()
  // the zone refreshed last: moving it to the end again would only churn the map, and a
  // long-lived map that churns keeps its replaced tables' entries alive (core/in-flight.ts)
  let newest: string | undefined
  const inflight = new Map<string, Promise<FetchOutcome>>()
  const bucket = makeTokenBucket(options.fetchesPerSecond, options.fetchBurst, options.now)
  let fetches = 0
  let refused = 0
  let refusedSinceLog = 0
  let budgetLoggedAt = Number.NEGATIVE_INFINITY

  const fetchSet = async (zone: string): Promise<FetchOutcome> => {
    fetches++
    const url = `${base}/.well-known/jwks.json?zone_id=${encodeURIComponent(zone)}`
    const unavailable = (description: string, reason: string): FetchOutcome => ({ _tag: "Unavailable", description, reason })
    let text: string
    try {
      const res = await options.fetch(url, {
        method: "GET",
        headers: { accept: "application/json" },
        redirect: "error",
        signal: AbortSignal.timeout(options.timeoutMs)
      })
      if (res.status === 404) {
        await res.body?.cancel().catch(() => {})
        return { _tag: "UnknownZone" }
      }
      if (res.status !== 200) {
        await res.body?.cancel().catch(() => {})
        return unavailable(`the key server answered ${res.status}`, `key set request answered HTTP ${res.status}`)
      }
      text = await res.text()
    } catch (cause) {
      const timedOut = cause instanceof Error && (cause.name === "TimeoutError" || cause.name === "AbortError")
      return timedOut
        ? unavailable("the key server did not answer in time", `key set request timed out after ${options.timeoutMs} ms`)
        : unavailable("the key server is unreachable", `key set request failed: ${describeCause(cause)}`)
    }
    if (text.length > MAX_JWKS_BYTES) return unavailable("the key server served an invalid key set", `key set larger than ${MAX_JWKS_BYTES} bytes`)
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      return unavailable("the key server served an invalid key set", "key set is not JSON")
    }
    const keys = (body as { keys?: unknown } | null)?.keys
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === "object" && k !== null && !Array.isArray(k))) {
      return unavailable("the key server served an invalid key set", "key set has no keys array of objects")
    }
    if (keys.length === 0) return { _tag: "UnknownZone" }
    let lookup: KeyLookup
    try {
      lookup = createLocalJWKSet(body as JSONWebKeySet)
    } catch (cause) {
      return unavailable("the key server served an invalid key set", `key set rejected: ${describeCause(cause)}`)
    }
    const kids = new Set(keys.flatMap((k: { kid?: unknown }) => (typeof k.kid === "string" ? [k.kid] : [])))
    return { _tag: "Fetched", keys: lookup, kids }
  }

  const rememberUnknown = (zone: string) => {
    known.delete(zone)
    if (newest === zone) newest = undefined
    unknown.delete(zone)
    unknown.set(zone, options.now() + options.unknownZoneTtlMs)
    while (unknown.size > options.maxUnknownZones) unknown.delete(unknown.keys().next().value as string)
  }

  const rememberKeys = (zone: string, fetched: { readonly keys: KeyLookup; readonly kids: ReadonlySet<string> }, at: number) => {
    unknown.delete(zone)
    known.delete(zone)
    known.set(zone, { keys: fetched.keys, kids: fetched.kids, fetchedAt: at, attemptedAt: at })
    newest = zone
    while (known.size > options.maxZones) known.delete(known.keys().next().value as string)
  }

  /** One fetch per zone at a time; the caller that starts it records the outcome for all. */
  const fetchShared = (zone: string): Promise<FetchOutcome> | undefined => {
    const running = inflight.get(zone)
    if (running) return running
    if (!bucket.take()) return undefined
    const startedAt = options.now()
    const cached = known.get(zone)
    if (cached) cached.attemptedAt = startedAt
    const p = fetchSet(zone).then((outcome) => {
      if (outcome._tag === "Fetched") rememberKeys(zone, outcome, startedAt)
      else if (outcome._tag === "UnknownZone") rememberUnknown(zone)
      return outcome
    }).finally(() => inflight.delete(zone))
    inflight.set(zone, p)
    return p
  }

  const toOutcome = (o: FetchOutcome): KeysOutcome => (o._tag === "Fetched" ? { _tag: "Keys", keys: o.keys } : o)

  /** The keys to verify a token of `zone` signed under `kid`, or why there are none. */
  const keysFor = async (zone: string, kid: string): Promise<KeysOutcome> => {
    const t = options.now()
    const until = unknown.get(zone)
    if (until !== undefined) {
      if (until > t) return { _tag: "UnknownZone" }
      unknown.delete(zone)
    }
    const cached = known.get(zone)
    const fresh = cached !== undefined && t - cached.fetchedAt < options.cacheMaxAgeMs
    if (cached && fresh) {
      // least recently used first
      if (newest !== zone) {
        known.delete(zone)
        known.set(zone, cached)
        newest = zone
      }
      // an unknown kid may be a rotation: look again, but not more often than the cooldown
      if (cached.kids.has(kid) || t - cached.attemptedAt < options.cooldownMs) return { _tag: "Keys", keys: cached.keys }
    }
    const shared = fetchShared(zone)
    if (shared === undefined) {
      // over the fetch budget: fresh keys still decide (an unknown kid is then refused), nothing else can
      if (cached && fresh) return { _tag: "Keys", keys: cached.keys }
      refused++
      refusedSinceLog++
      const description = "too many key set lookups; retry later"
      if (t - budgetLoggedAt < 1000) return { _tag: "Unavailable", description }
      const reason = `key set fetch budget exhausted (${options.fetchesPerSecond}/s, burst ${options.fetchBurst}); ` +
        `${refusedSinceLog} lookup(s) refused since the last report`
      budgetLoggedAt = t
      refusedSinceLog = 0
      return { _tag: "Unavailable", description, reason }
    }
    return toOutcome(await shared)
  }

  return {
    keysFor,
    /** Fetches started so far and lookups refused for the budget: for tests and metrics. */
    stats: () => ({ fetches, refusedForBudget: refused, knownZones: known.size, unknownZones: unknown.size })
  }
}

export type JwksCache = ReturnType<typeof makeJwksCache>

// A zone's key ring (aggregate `zone_key`, id = the zone's id): ProvisionKey, RotateKey,
// AdvanceRing → ZoneKeyCreated, ZoneKeyActivated, ZoneKeyRetired, ZoneKeyRemoved.
//
// Lifecycle of a key: next → active → retired → removed. A zone's first key is active at
// once. A rotated-in key is `next`: published in the JWKS for the lead time before it signs,
// so that a verifier holding a cached JWKS (JWKS_MAX_AGE_S) already knows it when the first
// mandate it signs arrives. When its time comes it becomes active and the previous active key
// is retired: it signs no more but stays published until removeAt, so that the mandates it
// signed verify until they expire.
//
// Pure: the time is meta.now, the durations and the new key's public material arrive in the
// command (the private key never reaches the decider or the events).
import { Effect, Schema } from "effect"
import type { Aggregate, CommandMeta } from "../../core/command.ts"
import type { PublicJwkV1 } from "./events.ts"

export type PublicJwk = typeof PublicJwkV1.Type
export type KeyStatus = "next" | "active" | "retired"

export interface RingKey {
  readonly kid: string
  readonly status: KeyStatus
  readonly activatesAt: string
  /** Set when the key is retired. */
  readonly removeAt: string | null
}

/** The keys still published, in creation order; removed keys are gone. */
export interface KeyRingState {
  readonly keys: ReadonlyArray<RingKey>
}

/** A freshly generated key's public half (its kid is the JWK's). */
export interface NewKey {
  readonly kid: string
  readonly publicJwk: PublicJwk
}

export type KeyRingCommand =
  /** The zone's first key, active at once; nothing when the ring already has keys (idempotent). */
  | { readonly _tag: "ProvisionKey"; readonly key: NewKey }
  /** A new key, `next` until now + leadSeconds; while one is pending, nothing (it is the answer). */
  | { readonly _tag: "RotateKey"; readonly key: NewKey; readonly leadSeconds: number }
  /** Activates a due next key (retiring the active one) and removes retired keys past removeAt. */
  | { readonly _tag: "AdvanceRing"; readonly retiredKeepSeconds: number }

export type KeyRingEvent =
  | {
    readonly type: "ZoneKeyCreated"
    readonly data: { readonly kid: string; readonly publicJwk: PublicJwk; readonly status: "next" | "active"; readonly activatesAt: string }
  }
  | { readonly type: "ZoneKeyActivated"; readonly data: { readonly kid: string } }
  | { readonly type: "ZoneKeyRetired"; readonly data: { readonly kid: string; readonly removeAt: string } }
  | { readonly type: "ZoneKeyRemoved"; readonly data: { readonly kid: string } }

/** A command the ring cannot take: a bug of the caller (it ensures the zone first, it makes fresh keys). */
export class KeyRingRejected extends Schema.TaggedError<KeyRingRejected>()("KeyRingRejected", {
  reason: Schema.Literals(["ring_empty", "duplicate_kid", "kid_mismatch"])
}) {}

export const KEY_RING = "zone_key"

export const emptyRing: KeyRingState = { keys: [] }

export const activeKey = (s: KeyRingState): RingKey | undefined => s.keys.find((k) => k.status === "active")
export const nextKey = (s: KeyRingState): RingKey | undefined => s.keys.find((k) => k.status === "next")

const plusSeconds = (at: Date, seconds: number) => new Date(at.getTime() + seconds * 1000).toISOString()
const reached = (instant: string, now: Date) => Date.parse(instant) <= now.getTime()

const checkNew = (state: KeyRingState, key: NewKey): KeyRingRejected | undefined => {
  if (key.publicJwk.kid !== key.kid) return new KeyRingRejected({ reason: "kid_mismatch" })
  if (state.keys.some((k) => k.kid === key.kid)) return new KeyRingRejected({ reason: "duplicate_kid" })
  return undefined
}

const decide = (command: KeyRingCommand, state: KeyRingState, meta: CommandMeta): Effect.Effect<ReadonlyArray<KeyRingEvent>, KeyRingRejected> => {
  const now = meta.now
  switch (command._tag) {
    case "ProvisionKey": {
      if (state.keys.length > 0) return Effect.succeed([])
      const bad = checkNew(state, command.key)
      if (bad) return Effect.fail(bad)
      return Effect.succeed([{
        type: "ZoneKeyCreated",
        data: { kid: command.key.kid, publicJwk: command.key.publicJwk, status: "active", activatesAt: now.toISOString() }
      }])
    }
    case "RotateKey": {
      if (activeKey(state) === undefined) return Effect.fail(new KeyRingRejected({ reason: "ring_empty" }))
      // a second rotation during the lead time would leave two keys racing to activate: the
      // pending one is the answer (the caller reads it from the state)
      if (nextKey(state) !== undefined) return Effect.succeed([])
      const bad = checkNew(state, command.key)
      if (bad) return Effect.fail(bad)
      return Effect.succeed([{
        type: "ZoneKeyCreated",
        data: {
          kid: command.key.kid,
          publicJwk: command.key.publicJwk,
          status: "next",
          activatesAt: plusSeconds(now, Math.max(0, command.leadSeconds))
        }
      }])
    }
    case "AdvanceRing": {
      const out: Array<KeyRingEvent> = []
      for (const k of state.keys) {
        if (k.status === "retired" && k.removeAt !== null && reached(k.removeAt, now)) out.push({ type: "ZoneKeyRemoved", data: { kid: k.kid } })
      }
      const due = state.keys.find((k) => k.status === "next" && reached(k.activatesAt, now))
      if (due !== undefined) {
        out.push({ type: "ZoneKeyActivated", data: { kid: due.kid } })
        const removeAt = plusSeconds(now, Math.max(0, command.retiredKeepSeconds))
        for (const k of state.keys) if (k.status === "active") out.push({ type: "ZoneKeyRetired", data: { kid: k.kid, removeAt } })
      }
      return Effect.succeed(out)
    }
  }
}

const evolve = (state: KeyRingState, event: KeyRingEvent): KeyRingState => {
  switch (event.type) {
    case "ZoneKeyCreated":
      return {
        keys: [...state.keys, { kid: event.data.kid, status: event.data.status, activatesAt: event.data.activatesAt, removeAt: null }]
      }
    case "ZoneKeyActivated":
      return { keys: state.keys.map((k) => (k.kid === event.data.kid ? { ...k, status: "active" } : k)) }
    case "ZoneKeyRetired":
      return { keys: state.keys.map((k) => (k.kid === event.data.kid ? { ...k, status: "retired", removeAt: event.data.removeAt } : k)) }
    case "ZoneKeyRemoved":
      return { keys: state.keys.filter((k) => k.kid !== event.data.kid) }
  }
}

export const keyRing: Aggregate<KeyRingState, KeyRingCommand, KeyRingEvent, KeyRingRejected> = {
  type: KEY_RING,
  initialState: emptyRing,
  decide,
  evolve
}

// The sts's events, version 1 of each (frozen once published): a zone's key ring. The
// aggregate (`zone_key`, id = the zone's id) holds every key of one zone; its events carry
// public material only — the private keys stay sealed in sts_zone_key_secrets.
import { Schema } from "effect"
import { EventRegistry, type EventVersion } from "../../schemas/registry.ts"

const Kid = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(128)))
const Instant = Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/u)))

/** A public EC key as published in the JWKS (no private member). */
export const PublicJwkV1 = Schema.Struct({
  kty: Schema.Literal("EC"),
  crv: Schema.Literal("P-256"),
  x: Schema.String,
  y: Schema.String,
  kid: Kid,
  alg: Schema.Literal("ES256"),
  use: Schema.Literal("sig")
})

export const ZoneKeyCreatedV1 = Schema.Struct({
  kid: Kid,
  publicJwk: PublicJwkV1,
  /** A zone's first key signs at once; a rotated-in key is published (next) until activatesAt. */
  status: Schema.Literals(["next", "active"]),
  activatesAt: Instant
})
export const ZoneKeyActivatedV1 = Schema.Struct({ kid: Kid })
/** Signs no more; still published until removeAt, so mandates it signed verify until they expire. */
export const ZoneKeyRetiredV1 = Schema.Struct({ kid: Kid, removeAt: Instant })
export const ZoneKeyRemovedV1 = Schema.Struct({ kid: Kid })

export const stsEvents: ReadonlyArray<EventVersion<any>> = [
  { type: "ZoneKeyCreated", version: 1, data: ZoneKeyCreatedV1 },
  { type: "ZoneKeyActivated", version: 1, data: ZoneKeyActivatedV1 },
  { type: "ZoneKeyRetired", version: 1, data: ZoneKeyRetiredV1 },
  { type: "ZoneKeyRemoved", version: 1, data: ZoneKeyRemovedV1 }
]

export const events = new EventRegistry().register(...stsEvents)

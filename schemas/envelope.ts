// The event envelope: one shape for every event on every stream and in the log.
import { Schema } from "effect"

const NonEmpty = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(256)))
const PositiveInt = Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(1)))

export const AggregateRef = Schema.Struct({ type: NonEmpty, id: NonEmpty })
export const Actor = Schema.Struct({ kind: NonEmpty, id: NonEmpty })
export type Actor = typeof Actor.Type

export const Envelope = Schema.Struct({
  /** UUIDv7: unique, and roughly time-ordered. */
  id: Schema.String.pipe(Schema.check(Schema.isUUID())),
  /** Past tense, e.g. AgentSpawned. */
  type: NonEmpty,
  schemaVersion: PositiveInt,
  zoneId: NonEmpty,
  aggregate: AggregateRef,
  /** 1, 2, 3… per aggregate. */
  sequence: PositiveInt,
  /** Global position in the Postgres log (a bigint, carried as a decimal string). */
  position: Schema.String.pipe(Schema.check(Schema.isPattern(/^[0-9]{1,19}$/u))),
  occurredAt: Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/u))),
  actor: Actor,
  correlationId: NonEmpty,
  causationId: Schema.NullOr(NonEmpty),
  data: Schema.Unknown
})
export type Envelope = typeof Envelope.Type

export const decodeEnvelope = Schema.decodeUnknownResult(Envelope)

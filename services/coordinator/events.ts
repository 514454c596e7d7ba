// The coordinator's events, version 1 of each (frozen once published), and the registry
// its producer writes with. services/events.ts merges them with every other service's
// for the readers of all events (the CLI, `npm run schemas`).
import { Schema } from "effect"
import { EventRegistry, type EventVersion } from "../../schemas/registry.ts"

const Id = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(128)))
const Instant = Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/u)))
// `service` was added to AgentSpawned v1 in place: widening the accepted values reads every
// event written before, and existing SDKs send it (it behaves as `instance`)
const Kind = Schema.Literals(["instance", "service", "ephemeral"])
const Reason = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(500)))

export const AgentSpawnedV1 = Schema.Struct({
  applicationId: Id,
  parentId: Schema.NullOr(Id),
  rootId: Id,
  depth: Schema.Int,
  kind: Kind,
  ttlSeconds: Schema.Int,
  expiresAt: Instant,
  metadata: Schema.Record(Schema.String, Schema.Unknown)
})
export const AgentSuspendedV1 = Schema.Struct({ cascade: Schema.Boolean })
export const AgentResumedV1 = Schema.Struct({ cascade: Schema.Boolean })
export const AgentTerminatedV1 = Schema.Struct({ reason: Reason, causeId: Schema.NullOr(Id) })

export const ConstraintsV1 = Schema.Struct({
  resources: Schema.optionalKey(Schema.Array(Schema.String)),
  actions: Schema.optionalKey(Schema.Array(Schema.String)),
  maxHops: Schema.optionalKey(Schema.Int),
  expiresAt: Schema.optionalKey(Instant)
})
export const DelegationCreatedV1 = Schema.Struct({
  issuerApplicationId: Id,
  receiverApplicationId: Id,
  sourceSessionId: Id,
  targetSessionId: Id,
  scopes: Schema.Array(Schema.String),
  constraints: ConstraintsV1,
  parentEdgeId: Schema.NullOr(Id),
  expiresAt: Instant
})
export const DelegationRevokedV1 = Schema.Struct({ reason: Reason, causeId: Schema.NullOr(Id) })

export const coordinatorEvents: ReadonlyArray<EventVersion<any>> = [
  { type: "AgentSpawned", version: 1, data: AgentSpawnedV1 },
  { type: "AgentSuspended", version: 1, data: AgentSuspendedV1 },
  { type: "AgentResumed", version: 1, data: AgentResumedV1 },
  { type: "AgentTerminated", version: 1, data: AgentTerminatedV1 },
  { type: "DelegationCreated", version: 1, data: DelegationCreatedV1 },
  { type: "DelegationRevoked", version: 1, data: DelegationRevokedV1 }
]

export const events = new EventRegistry().register(...coordinatorEvents)

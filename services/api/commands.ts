// The api's command handlers: HTTP → command → decide (domain/record.ts) → events + the
// api_records row + outbox, in one statement (or one group). Every command is an admin's:
// the actor is the admin credential's id, never the token.
import { isUniqueViolation } from "../../core/eventstore.ts"
import type { CommandMeta, PendingEvent } from "../../core/command.ts"
import type { ProducerDefinition, ProducerShape } from "../../core/producer.ts"
import type { Keys } from "../../core/redis/keys.ts"
import { aggregates, ApiRejected, type Changed, type Rec, rejected, type RecordState } from "./domain/record.ts"
import { API_REVOCATIONS, type ApiAggregateType, events } from "./events.ts"
import { changesFor } from "./projection.ts"

export const PRODUCER = "api"

/** Streams: one per aggregate type; revocations also where the sts and the gateway listen (CONTRACTS.md). */
export const streamsFor = (keys: Keys) => (e: PendingEvent) =>
  API_REVOCATIONS.has(e.type) ? [keys.stream(e.aggregateType), keys.stream("revocation")] : [keys.stream(e.aggregateType)]

export const apiProducer: ProducerDefinition = { name: PRODUCER, registry: events, streams: streamsFor }

/** Who asks and why: the admin credential and the request. */
export interface Caller {
  readonly actorId: string
  readonly requestId: string
  readonly idempotencyKey?: string | undefined
  readonly idempotencyFingerprint?: string | undefined
  /** Where keys are looked up: the route's zone (or the zone list's), so a zone's create replays too. */
  readonly idempotencyScope?: string | undefined
}

/** Which unique index refused a row, as the conflict the caller sees. */
const CONFLICTS: Record<string, readonly [code: string, description: string]> = {
  api_zone_slug: ["zone_slug_taken", "a live zone already has this slug"],
  api_resource_identifier: ["resource_identifier_taken", "a live resource in this zone already has this identifier"],
  api_binding_pair: ["binding_exists", "this application is already bound to this resource"],
  api_grant_subject: ["grant_exists", "a live grant already exists for this application, user and resource"]
}

const conflictOf = (error: unknown): ApiRejected | undefined => {
  for (const [index, [code, description]] of Object.entries(CONFLICTS)) {
    if (isUniqueViolation(error, index)) return rejected(409, code, description)
  }
  return undefined
}

const metaOf = (caller: Caller, zoneId: string): CommandMeta => ({
  zoneId,
  actor: { kind: "admin", id: caller.actorId },
  now: new Date(),
  correlationId: caller.requestId,
  idempotencyKey: caller.idempotencyKey,
  idempotencyFingerprint: caller.idempotencyFingerprint,
  idempotencyScope: caller.idempotencyScope
})

/** The row changes of a command's events (the same function the rebuild runs). */
const projectRows = (_state: RecordState, pending: ReadonlyArray<PendingEvent>, meta: CommandMeta) =>
  pending.flatMap((e) =>
    changesFor({
      type: e.type,
      aggregateType: e.aggregateType,
      aggregateId: e.aggregateId,
      zoneId: meta.zoneId,
      sequence: e.sequence,
      occurredAt: meta.now.toISOString(),
      data: e.data
    })
  )

/** What a command answers (and its Idempotency-Key replays): no record, so never a secret. */
export interface Answer {
  readonly id: string
  readonly version: number
}

export const makeCommands = (producer: ProducerShape) => {
  const run = (
    type: ApiAggregateType,
    caller: Caller,
    zoneId: string,
    id: string,
    command: Parameters<(typeof aggregates)[ApiAggregateType]["decide"]>[0],
    isNew = false
  ) => {
    const meta = metaOf(caller, zoneId)
    return producer.execute({
      aggregate: aggregates[type],
      id,
      isNew,
      meta,
      command,
      projectRows,
      refusal: conflictOf,
      result: (state): Answer => ({ id, version: state.version })
    })
  }
  return {
    create: (type: ApiAggregateType, caller: Caller, zoneId: string, id: string, record: Rec) =>
      run(type, caller, zoneId, id, { _tag: "Create", record }, true),
    change: (
      type: ApiAggregateType,
      caller: Caller,
      zoneId: string,
      id: string,
      event: string,
      expectedVersion: number | undefined,
      change: (current: Rec) => Changed | ApiRejected
    ) => run(type, caller, zoneId, id, { _tag: "Change", event, expectedVersion, change }),
    end: (type: ApiAggregateType, caller: Caller, zoneId: string, id: string, reason: string, expectedVersion?: number) =>
      run(type, caller, zoneId, id, { _tag: "End", reason, expectedVersion })
  }
}

export type Commands = ReturnType<typeof makeCommands>

// The coordinator's command handlers: HTTP → command → decide → events + tables + outbox.
// A spawn checks that its zone and application are not archived and reserves its place
// under the zone, application and parent limits inside its write statement
// (coordinator_require_active, then coordinator_reserve: atomic counters, exact across replicas); a
// delegation is created under the zone's advisory lock, so that no two racing edges close
// a cycle together.
import { Effect } from "effect"
import { type Kysely, sql, type Transaction } from "kysely"
import { v7 as uuidv7 } from "uuid"
import type { Aggregate, CommandMeta, PendingEvent } from "../../core/command.ts"
import type { ProducerDefinition, ProducerShape } from "../../core/producer.ts"
import type { Tables } from "../../core/db/tables.ts"
import type { Keys } from "../../core/redis/keys.ts"
import { events } from "./events.ts"
import { type Constraints, delegation, type EndpointFacts, type InboundFacts } from "./domain/delegation.ts"
import {
  type AgentKind,
  inactiveRejection,
  type Limits,
  limitRejection,
  type ParentFacts,
  session,
  type SessionCommand,
  type SessionState
} from "./domain/session.ts"
import { changesFor } from "./projection.ts"

export const PRODUCER = "coordinator"

export interface CoordinatorDeps {
  readonly producer: ProducerShape
  readonly limits: Limits
}

/** Who asks, and why: the mandate's application and the request's id. */
export interface Caller {
  readonly zoneId: string
  /** "application" for a mandate's holder, "system" for the coordinator's own cascades and expiries. */
  readonly kind?: "application" | "system"
  readonly applicationId: string
  readonly requestId: string
  readonly idempotencyKey?: string | undefined
  readonly idempotencyFingerprint?: string | undefined
}

const REVOCATIONS = new Set(["AgentTerminated", "DelegationRevoked"])

/** Streams: one per aggregate type; terminations and revocations also go where the STS and gateway listen. */
export const streamsFor = (keys: Keys) => (e: PendingEvent) =>
  REVOCATIONS.has(e.type) ? [keys.stream(e.aggregateType), keys.stream("revocation")] : [keys.stream(e.aggregateType)]

/** The coordinator's producer: its events, and where they go. */
export const coordinatorProducer: ProducerDefinition = { name: PRODUCER, registry: events, streams: streamsFor }

/** The tables' changes, written with the events (see projection.ts; execute folds them per row). */
export const projectInline = (_state: unknown, pending: ReadonlyArray<PendingEvent>, meta: CommandMeta) =>
  pending.flatMap((e) =>
    changesFor({ type: e.type, zoneId: meta.zoneId, aggregateId: e.aggregateId, occurredAt: meta.now.toISOString(), data: e.data })
  )

const metaOf = (c: Caller): CommandMeta => ({
  zoneId: c.zoneId,
  actor: { kind: c.kind ?? "application", id: c.applicationId },
  now: new Date(),
  correlationId: c.requestId,
  idempotencyKey: c.idempotencyKey,
  idempotencyFingerprint: c.idempotencyFingerprint
})

const lockZone = (trx: Transaction<Tables>, zoneId: string) =>
  sql`select pg_advisory_xact_lock(hashtext('caracal:coordinator:zone'), hashtext(${zoneId}))`.execute(trx)

// Read without a lock: depth, root and kind never change, and a parent that ends between
// this read and the spawn's commit is caught by the cascade sweep, which ends the child too.
const parentFacts = async (db: Kysely<Tables>, zoneId: string, parentId: string): Promise<ParentFacts | null> => {
  const { rows } = await sql<ParentFacts & { expiresAt: Date }>`
    select p.id, p.application_id as "applicationId", p.root_id as "rootId", p.depth, p.kind, p.status, p.expires_at as "expiresAt"
    from agent_sessions p where p.id = ${parentId} and p.zone_id = ${zoneId}`.execute(db)
  const p = rows[0]
  return p ? { ...p, expiresAt: new Date(p.expiresAt).toISOString() } : null
}

/** The SQLSTATE coordinator_reserve raises with, its message being the limit's code. */
const LIMIT_STATE = "CA429"
/** The SQLSTATE coordinator_require_active raises with: zone_inactive or application_inactive. */
const INACTIVE_STATE = "CA403"

/** A spawn's refusal by the database, as the domain error it stands for. */
const spawnRefusal = (e: unknown, limits: Limits) => {
  const code = (e as { code?: string }).code
  const message = String((e as Error).message)
  if (code === LIMIT_STATE) return limitRejection(message, limits)
  if (code === INACTIVE_STATE) return inactiveRejection(message)
  return undefined
}

/** A session that ends gives its places back (zone, application, parent), in the order spawns take them. */
const releaseOnEnd = (state: SessionState, pending: ReadonlyArray<PendingEvent>, meta: CommandMeta) =>
  state.status !== "none" && pending.some((e) => e.type === "AgentTerminated")
    ? { sql: sql`coordinator_release(${meta.zoneId}, ${state.applicationId}, ${state.parentId})` }
    : undefined

/** A spawn's idempotency key returns its session only while that session lives (existing SDKs reuse keys). */
const whileSessionLives = async (db: Kysely<Tables> | Transaction<Tables>, result: { id: string }) => {
  const { rows } = await sql<{ live: boolean }>`select status <> 'terminated' and expires_at > now() as live
    from agent_sessions where id = ${result.id}`.execute(db)
  return rows[0]?.live === true
}

export interface SpawnRequest {
  readonly applicationId: string
  readonly parentId: string | undefined
  readonly kind: AgentKind
  readonly ttlSeconds: number | undefined
  readonly metadata: Readonly<Record<string, unknown>>
}

export const makeCommands = (deps: CoordinatorDeps) => {
  const { database, execute } = deps.producer
  const common = { projectRows: projectInline }

  /**
   * A root spawn is one statement: the event, the tables, the outbox, the check that the zone
   * and the application are not archived (coordinator_require_active: the projection of the
   * api's events, or on a miss the log; see api-status.ts) and the reservation of a place
   * under each counting limit (coordinator_reserve); a child spawn reads its parent first.
   */
  const spawn = (caller: Caller, req: SpawnRequest) =>
    Effect.gen(function*() {
      const id = uuidv7()
      const parent = req.parentId === undefined
        ? undefined
        : yield* database.query((db) => parentFacts(db, caller.zoneId, req.parentId!))
      const { maxPerZone, maxPerApp, maxChildren } = deps.limits
      return yield* execute({
        ...common,
        aggregate: session,
        id,
        isNew: true,
        meta: metaOf(caller),
        command: {
          _tag: "SpawnAgent",
          id,
          applicationId: req.applicationId,
          kind: req.kind,
          ttlSeconds: req.ttlSeconds,
          metadata: req.metadata,
          parent,
          limits: deps.limits
        },
        capacity: (_state, _pending, meta) => ({
          // evaluated left to right: an archived zone or application is refused before any place is taken
          // (and a refusal by either aborts the statement, so nothing taken stays taken)
          sql: sql`(coordinator_require_active(${meta.zoneId}, ${req.applicationId})
            and coordinator_reserve(${meta.zoneId}, ${req.applicationId}, ${parent?.id ?? null}, ${maxPerZone}, ${maxPerApp}, ${maxChildren}))`,
          refusal: (e) => spawnRefusal(e, deps.limits)
        }),
        keyPinnedWhile: whileSessionLives,
        result: () => ({ id })
      })
    })

  /** A command on an existing aggregate (its state is loaded, or cached). */
  const act = <S, C, E extends { type: string; data: unknown }, Err>(aggregate: Aggregate<S, C, E, Err>) =>
    (caller: Caller, id: string, command: C) =>
      execute({ ...common, aggregate, id, meta: metaOf(caller), command, result: () => ({ id }) })
  const onSession = (caller: Caller, id: string, command: SessionCommand) =>
    execute({
      ...common,
      aggregate: session,
      id,
      meta: metaOf(caller),
      command,
      capacity: releaseOnEnd,
      result: () => ({ id })
    })

  const endpoint = async (trx: Transaction<Tables>, zoneId: string, id: string): Promise<EndpointFacts | null> => {
    const { rows } = await sql<{ id: string; applicationId: string; status: EndpointFacts["status"]; expiresAt: Date }>`
      select id, application_id as "applicationId", status, expires_at as "expiresAt" from agent_sessions
      where id = ${id} and zone_id = ${zoneId}`.execute(trx)
    const r = rows[0]
    return r ? { ...r, expiresAt: new Date(r.expiresAt).toISOString() } : null
  }

  /** The source session's own authority, if it holds one: the active inbound edge that expires last. */
  const inboundOf = async (trx: Transaction<Tables>, sessionId: string, now: Date): Promise<InboundFacts | undefined> => {
    const { rows } = await sql<{ id: string; scopes: Array<string>; constraints: Constraints; expiresAt: Date }>`
      select id, scopes, constraints, expires_at as "expiresAt" from delegation_edges
      where target_session_id = ${sessionId} and status = 'active' and expires_at > ${now}
      order by expires_at desc limit 1`.execute(trx)
    const r = rows[0]
    return r ? { ...r, expiresAt: new Date(r.expiresAt).toISOString() } : undefined
  }

  /** Is there an active path target → … → source already? (then source → target closes a cycle) */
  const closesCycle = async (trx: Transaction<Tables>, sourceId: string, targetId: string, now: Date) => {
    const { rows } = await sql<{ found: boolean }>`
      with recursive reach(session_id) as (
        select ${targetId}::text
        union
        select e.target_session_id from delegation_edges e join reach r on e.source_session_id = r.session_id
        where e.status = 'active' and e.expires_at > ${now}
      )
      select exists (select 1 from reach where session_id = ${sourceId}) as found`.execute(trx)
    return rows[0]?.found === true
  }

  return {
    spawn,
    suspend: (caller: Caller, id: string) => onSession(caller, id, { _tag: "SuspendAgent", cascade: false }),
    resume: (caller: Caller, id: string) => onSession(caller, id, { _tag: "ResumeAgent", cascade: false }),
    terminate: (caller: Caller, id: string, reason: string) => onSession(caller, id, { _tag: "TerminateAgent", reason, causeId: null }),
    cascadeOn: onSession,

    createDelegation: (caller: Caller, req: {
      readonly issuerApplicationId: string
      readonly receiverApplicationId: string
      readonly sourceSessionId: string
      readonly targetSessionId: string
      readonly scopes: ReadonlyArray<string>
      readonly constraints: Constraints
      readonly ttlSeconds: number | undefined
    }) =>
      Effect.suspend(() => {
        const id = uuidv7()
        const meta = metaOf(caller)
        return execute({
          ...common,
          aggregate: delegation,
          id,
          isNew: true,
          meta,
          readFacts: async (trx) => {
            // edges of one zone are created one at a time: two racing edges could otherwise close a cycle together
            await lockZone(trx, caller.zoneId)
            return {
              _tag: "CreateDelegation" as const,
              issuerApplicationId: req.issuerApplicationId,
              receiverApplicationId: req.receiverApplicationId,
              source: await endpoint(trx, caller.zoneId, req.sourceSessionId),
              target: await endpoint(trx, caller.zoneId, req.targetSessionId),
              scopes: req.scopes,
              constraints: req.constraints,
              ttlSeconds: req.ttlSeconds,
              inbound: await inboundOf(trx, req.sourceSessionId, meta.now),
              closesCycle: await closesCycle(trx, req.sourceSessionId, req.targetSessionId, meta.now)
            }
          },
          result: () => ({ id })
        })
      }),

    onDelegation: act(delegation)
  }
}

export type Commands = ReturnType<typeof makeCommands>

/** The coordinator acting on its own (cascades, expiry): the actor recorded in the events. */
export const systemCaller = (zoneId: string, cause: string): Caller => ({
  zoneId,
  kind: "system",
  applicationId: "coordinator",
  requestId: cause
})

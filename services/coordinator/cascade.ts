// Cascades and expiry as a process that can always be resumed. A cascade is not one big
// transaction: the first command (terminate the root, revoke the edge) commits on its
// own, and this sweep then finds, in the coordinator's tables, every session or edge that
// is out of step with its parent and brings it in step with one command each (one event
// per session). If the coordinator dies half-way, the next sweep — at start, after every
// command and on a timer — finishes the job. Several replicas may sweep at once: each
// command is idempotent (a terminated session stays terminated, without a second event)
// and optimistic, so the worst case is wasted work, never a duplicate event.
import { Effect } from "effect"
import { sql } from "kysely"
import type { DatabaseShape } from "../../core/db/database.ts"
import { type Commands, systemCaller } from "./commands.ts"

/** Revocation reasons that end the target session too (expiry and ended endpoints do not). */
const SESSION_ENDING = `revoke_reason not in ('ttl', 'session_ended')`

interface Work {
  readonly kind: "terminate" | "suspend" | "resume" | "expire" | "revoke" | "expire_edge"
  readonly zone_id: string
  readonly id: string
  readonly reason: string | null
  readonly cause_id: string | null
}

const BATCH = 500

/** Everything out of step, optionally in one zone only; one query per rule. */
const findWork = async (database: DatabaseShape, zone: string | undefined, now: Date): Promise<ReadonlyArray<Work>> => {
  const inZone = (alias: string) => (zone === undefined ? sql`true` : sql`${sql.ref(`${alias}.zone_id`)} = ${zone}`)
  const queries = [
    // children of an ended session end too; an expired parent passes its reason (ttl) down
    sql<Work>`select 'terminate' as kind, c.zone_id, c.id,
        case when p.end_reason = 'ttl' then 'ttl' else 'parent_terminated' end as reason, p.id as cause_id
      from agent_sessions c join agent_sessions p on p.id = c.parent_id
      where c.status <> 'terminated' and p.status = 'terminated' and ${inZone("c")} limit ${BATCH}`,
    sql<Work>`select 'suspend' as kind, c.zone_id, c.id, null as reason, p.id as cause_id
      from agent_sessions c join agent_sessions p on p.id = c.parent_id
      where c.status = 'active' and p.status = 'suspended' and ${inZone("c")} limit ${BATCH}`,
    sql<Work>`select 'resume' as kind, c.zone_id, c.id, null as reason, p.id as cause_id
      from agent_sessions c join agent_sessions p on p.id = c.parent_id
      where c.status = 'suspended' and c.suspended_by_cascade and p.status = 'active' and ${inZone("c")} limit ${BATCH}`,
    sql<Work>`select 'expire' as kind, s.zone_id, s.id, null as reason, null as cause_id
      from agent_sessions s where s.status <> 'terminated' and s.expires_at <= ${now} and ${inZone("s")} limit ${BATCH}`,
    // downstream edges of a revoked edge inherit its reason; edges whose endpoint ended are revoked
    sql<Work>`select 'revoke' as kind, e.zone_id, e.id, p.revoke_reason as reason, p.id as cause_id
      from delegation_edges e join delegation_edges p on p.id = e.parent_edge_id
      where e.status = 'active' and p.status = 'revoked' and ${inZone("e")} limit ${BATCH}`,
    sql<Work>`select 'revoke' as kind, e.zone_id, e.id, 'session_ended' as reason, s.id as cause_id
      from delegation_edges e join agent_sessions s on s.id in (e.source_session_id, e.target_session_id)
      where e.status = 'active' and s.status = 'terminated' and ${inZone("e")} limit ${BATCH}`,
    sql<Work>`select 'expire_edge' as kind, e.zone_id, e.id, null as reason, null as cause_id
      from delegation_edges e where e.status = 'active' and e.expires_at <= ${now} and ${inZone("e")} limit ${BATCH}`,
    // the session a revoked edge pointed at ends with it
    sql<Work>`select 'terminate' as kind, s.zone_id, s.id, 'delegation_revoked' as reason, e.id as cause_id
      from agent_sessions s join delegation_edges e on e.target_session_id = s.id
      where s.status <> 'terminated' and e.status = 'revoked' and e.${sql.raw(SESSION_ENDING)} and ${inZone("s")} limit ${BATCH}`
  ]
  const out: Array<Work> = []
  for (const q of queries) out.push(...(await q.execute(database.db)).rows)
  return out
}

type Failure = { readonly _tag: string }

const commandFor = (commands: Commands, w: Work): Effect.Effect<unknown, Failure> => {
  const caller = systemCaller(w.zone_id, `cascade:${w.cause_id ?? w.kind}`)
  switch (w.kind) {
    case "terminate":
      return commands.cascadeOn(caller, w.id, { _tag: "TerminateAgent", reason: w.reason ?? "parent_terminated", causeId: w.cause_id })
    case "suspend":
      return commands.cascadeOn(caller, w.id, { _tag: "SuspendAgent", cascade: true })
    case "resume":
      return commands.cascadeOn(caller, w.id, { _tag: "ResumeAgent", cascade: true })
    case "expire":
      return commands.cascadeOn(caller, w.id, { _tag: "ExpireAgent" })
    case "revoke":
      return commands.onDelegation(caller, w.id, { _tag: "RevokeDelegation", reason: w.reason ?? "parent_revoked", causeId: w.cause_id })
    case "expire_edge":
      return commands.onDelegation(caller, w.id, { _tag: "ExpireDelegation" })
  }
}

/**
 * Sweeps until nothing is out of step (bounded, so a flood cannot pin a request forever).
 * Returns how many commands it ran. Rejections (a session resumed by its owner meanwhile)
 * are expected races and skipped; infrastructure failures end the sweep for the next one.
 */
export const sweep = (database: DatabaseShape, commands: Commands, zone?: string, rounds = 100) =>
  Effect.gen(function*() {
    let ran = 0
    for (let round = 0; round < rounds; round++) {
      const work = yield* Effect.tryPromise(() => findWork(database, zone, new Date()))
      if (work.length === 0) break
      for (const w of work) {
        yield* commandFor(commands, w).pipe(
          Effect.catch((e) => (e._tag === "SessionRejected" || e._tag === "DelegationRejected" ? Effect.void : Effect.fail(e)))
        )
        ran++
      }
    }
    return ran
  })

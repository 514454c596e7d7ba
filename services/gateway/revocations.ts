// What has been revoked, as every gateway replica sees it: an in-memory projection of
// `caracal:{revocation}:events` (CONTRACTS.md), where the coordinator publishes terminated
// sessions and revoked delegation edges and the api its archived zones and applications,
// deleted bindings, revoked grants and credentials. A request whose mandate names any of
// them is refused, and a call in flight for one is cut as soon as the event arrives.
//
// Sessions and edges are remembered for as long as a mandate issued before their revocation
// can live (the longest per-call lifetime plus the clock tolerance): a mandate issued after
// it is refused by the sts, so the set does not grow without end. The api's ends are final
// and few (zones, applications, bindings, grants, credentials): kept.
import type { Kysely } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import { MemoryProjectionRunner, type Projection } from "../../core/projection.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { events as registry } from "../events.ts"

export type RevokedKind = "session" | "edge" | "zone" | "application" | "binding" | "grant" | "credential"

const KIND_OF: Readonly<Record<string, RevokedKind>> = {
  AgentTerminated: "session",
  DelegationRevoked: "edge",
  ZoneArchived: "zone",
  ApplicationArchived: "application",
  BindingDeleted: "binding",
  GrantRevoked: "grant",
  CredentialRevoked: "credential"
}

/** 15 min (the sts's longest per-call mandate) + 5 s tolerance, and a margin. */
export const FORGET_AFTER_MS = (15 * 60 + 5 + 55) * 1000

export interface RevocationState {
  /** kind → id → when it was revoked (ms). */
  readonly revoked: Map<RevokedKind, Map<string, number>>
  /** Called for each revocation as it is applied (cuts calls in flight). */
  readonly listeners: Set<(kind: RevokedKind, id: string) => void>
}

export const emptyRevocations = (): RevocationState => ({
  revoked: new Map((Object.values(KIND_OF) as Array<RevokedKind>).map((k) => [k, new Map()])),
  listeners: new Set()
})

const revocationProjection: Projection<RevocationState> = {
  name: "gateway-revocations",
  handles: new Set(Object.keys(KIND_OF)),
  apply: (s, e: Envelope) => {
    const kind = KIND_OF[e.type]
    if (kind === undefined) return
    const at = Date.parse(e.occurredAt)
    s.revoked.get(kind)!.set(e.aggregate.id, Number.isFinite(at) ? at : Date.now())
    for (const listener of s.listeners) listener(kind, e.aggregate.id)
  },
  reset: () => {}
}

export interface Revocations {
  readonly runner: MemoryProjectionRunner<RevocationState>
  readonly isRevoked: (kind: RevokedKind, id: string | undefined) => boolean
  /** Calls `listener` on every revocation from now on; returns the unsubscribe. */
  readonly onRevoked: (listener: (kind: RevokedKind, id: string) => void) => () => void
  /** Forgets sessions and edges revoked longer ago than any mandate they could have can live. */
  readonly forgetOld: (nowMs: number) => number
}

export const makeRevocations = (db: Kysely<Tables>): Revocations => {
  const runner = new MemoryProjectionRunner(revocationProjection, emptyRevocations(), db, registry)
  const { revoked, listeners } = runner.state
  return {
    runner,
    isRevoked: (kind, id) => id !== undefined && revoked.get(kind)!.has(id),
    onRevoked: (listener) => {
      listeners.add(listener)
      return () => void listeners.delete(listener)
    },
    forgetOld: (nowMs) => {
      let n = 0
      for (const kind of ["session", "edge"] as const) {
        for (const [id, at] of revoked.get(kind)!) {
          if (nowMs - at > FORGET_AFTER_MS) {
            revoked.get(kind)!.delete(id)
            n++
          }
        }
      }
      return n
    }
  }
}

/** The stream the revocations come from. */
export const REVOCATION_STREAM_TYPE = "revocation"

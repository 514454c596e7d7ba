// What one chained record is: the canonical bytes of an entry (exactly what the MAC and
// the Merkle leaf cover, stored as such so a row re-verifies from itself alone) and the
// columns the forensic queries filter on, which are derived from those bytes and nothing
// else (the verifier re-derives them: a column edited in place is caught too).
import { canonicalJson } from "../../core/signing.ts"

/** Chains that are not a zone's: records whose zone could not be verified, and the audit service's own alerts. */
export const UNVERIFIED = "_unverified"
export const AUDIT_CHAIN = "_audit"

export interface Entry {
  readonly v: 1
  /** The record's id (an audit record's id, an event's id): the deduplication key. */
  readonly id: string
  /** The chain it belongs to: a verified zone id, `_unverified` or `_audit`. */
  readonly chain: string
  /** `record` for the audit stream's records, `event` for domain events. */
  readonly origin: "record" | "event"
  /** The aggregate type of the stream it came from (`audit` for the audit stream). */
  readonly stream: string
  /** The record or event exactly as received (its JSON). */
  readonly body: Record<string, unknown>
}

export const canonicalBytes = (e: Entry): Buffer => Buffer.from(canonicalJson(e), "utf8")

export interface Columns {
  readonly occurred_at: string
  readonly source: string
  readonly kind: string
  readonly decision: string | null
  readonly request_id: string | null
  readonly session_id: string | null
  readonly client_id: string | null
  readonly jti: string | null
}

const str = (v: unknown): string | null => (typeof v === "string" ? v : null)

/** The filterable columns of an entry (the same function at ingest and at verification). */
export const columnsOf = (e: Entry): Columns => {
  const b = e.body
  if (e.origin === "record") {
    return {
      occurred_at: str(b.occurred_at) ?? "1970-01-01T00:00:00.000Z",
      source: str(b.source) ?? "unknown",
      kind: str(b.kind) ?? "unknown",
      decision: str(b.decision),
      request_id: str(b.request_id),
      session_id: str(b.agent_session_id),
      client_id: str(b.client_id),
      jti: str(b.jti)
    }
  }
  const aggregate = (b.aggregate ?? {}) as { type?: unknown; id?: unknown }
  const data = (b.data ?? {}) as Record<string, unknown>
  const actor = (b.actor ?? {}) as { id?: unknown }
  return {
    occurred_at: str(b.occurredAt) ?? "1970-01-01T00:00:00.000Z",
    source: e.stream,
    kind: str(b.type) ?? "unknown",
    decision: null,
    // an event's correlation id is the request that caused it (the api's request id)
    request_id: str(b.correlationId),
    // a delegation belongs to the story of the session it delegates into: the delegate acts there
    session_id: aggregate.type === "agent" ? str(aggregate.id) : str(data.sessionId) ?? str(data.agentSessionId) ?? str(data.targetSessionId),
    client_id: str(data.applicationId) ?? str(actor.id),
    jti: null
  }
}

/** The zone an entry claims (null for none): what decides between its zone's chain and `_unverified`. */
export const claimedZone = (origin: Entry["origin"], body: Record<string, unknown>): string | null =>
  origin === "record" ? str(body.zone_id) : str(body.zoneId)

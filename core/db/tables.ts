// Typed table interfaces for Kysely. One interface per table; SQL that uses them lives
// next to the code that runs it.
import type { ColumnType, Generated } from "kysely"

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>
type Json<T = unknown> = ColumnType<T, string, string>

/** The append-only event log: the full history, never updated or deleted. */
export interface EventsTable {
  /** Global position; allocated at insert, so it is NOT commit order (see eventstore reader). */
  position: ColumnType<string, never, never>
  /** The inserting transaction (xid8), set by default; read as text. */
  transaction_id: ColumnType<string, never, never>
  id: string
  zone_id: string
  aggregate_type: string
  aggregate_id: string
  sequence: number
  type: string
  schema_version: number
  occurred_at: Timestamp
  actor: Json<{ kind: string; id: string }>
  correlation_id: string
  causation_id: string | null
  data: Json
}

/** One row per (event, stream) to publish; the relay owns the status columns. */
export interface OutboxTable {
  id: Generated<string>
  producer: string
  stream: string
  event_position: string
  aggregate_key: string
  status: Generated<"pending" | "sent" | "dead">
  attempts: Generated<number>
  next_attempt_at: Generated<Date>
  lease_until: Date | null
  last_error: string | null
  created_at: Generated<Date>
  sent_at: Date | null
}

/** Idempotency keys: a retried command returns its first result. */
export interface CommandResultsTable {
  scope: string
  idempotency_key: string
  result: Json
  /** The canonical body the key was first used with (null for commands that have none). */
  fingerprint: string | null
  created_at: Generated<Date>
}

/** Relay leadership per producer: a lease with a fencing epoch. */
export interface RelayLeasesTable {
  producer: string
  epoch: string
  holder: string | null
  expires_at: Date
}

/** Per-aggregate checkpoints of a projection, written in the transaction of its effect. */
export interface ProjectionCheckpointsTable {
  projection: string
  aggregate_type: string
  aggregate_id: string
  sequence: number
}

/** Where a projection's catch-up from the log has reached, in (transaction id, position) order. */
export interface ProjectionCursorsTable {
  projection: string
  transaction_id: string
  position: string
  updated_at: Generated<Date>
}

export interface Tables {
  events: EventsTable
  outbox: OutboxTable
  command_results: CommandResultsTable
  projection_checkpoints: ProjectionCheckpointsTable
  projection_cursors: ProjectionCursorsTable
  relay_leases: RelayLeasesTable
}

// The audit record (CONTRACTS.md "Audit records"): what the sts and the gateway append to
// the audit stream for every decision, before they answer. One schema for writers and the
// audit service; never a secret or a token (a jti identifies a mandate without being one).
import { Schema } from "effect"

const Text = (max: number) => Schema.String.pipe(Schema.check(Schema.isMaxLength(max)))
const Opt = (max: number) => Schema.NullOr(Text(max))

export const AuditRecord = Schema.Struct({
  /** UUIDv7: the deduplication key. */
  id: Schema.String.pipe(Schema.check(Schema.isUUID())),
  /** null when the zone could not be verified (those records go to one `_unverified` chain). */
  zone_id: Opt(128),
  source: Schema.Literals(["sts", "gateway", "api", "coordinator", "audit"]),
  /** What was decided, e.g. `token_exchange`, `client_credentials`, `credential_release`, `proxy`. */
  kind: Text(64),
  decision: Schema.Literals(["allow", "deny", "error"]),
  reason: Opt(500),
  request_id: Opt(128),
  trace_id: Opt(128),
  client_id: Opt(128),
  agent_session_id: Opt(128),
  delegation_edge_id: Opt(128),
  resource: Opt(1024),
  scope: Opt(4096),
  jti: Opt(128),
  status: Schema.NullOr(Schema.Int),
  latency_ms: Schema.NullOr(Schema.Number),
  occurred_at: Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/u))),
  /** The policy engine's decision id, when one was asked. */
  decision_id: Schema.optionalKey(Opt(128)),
  /** The upstream credential a `credential_release` is about (its id: never its material). */
  credential_id: Schema.optionalKey(Opt(128))
})
export type AuditRecord = typeof AuditRecord.Type

export const decodeAuditRecord = Schema.decodeUnknownResult(AuditRecord)

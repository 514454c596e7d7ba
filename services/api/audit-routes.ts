// The forensic routes over the audit service's tables (services/audit): a zone's records
// with filters and a cursor, one request's whole story across the sts, gateway, api and
// coordinator, the chain's verification with its first broken record, and Merkle proofs
// against signed checkpoints. Read-only; sensitive metadata redacted (services/audit/redact.ts).
import { Effect } from "effect"
import { createSecretKey, type KeyObject } from "node:crypto"
import { type Kysely, sql } from "kysely"
import { DbError, isUnavailable } from "../../core/db/database.ts"
import { httpError } from "../../core/http/errors.ts"
import { publicKeyFromHex } from "../audit/checkpoint.ts"
import type { Entry } from "../audit/entry.ts"
import { consistencyProofFor, inclusionProofFor, ProofUnavailable } from "../audit/proofs.ts"
import { redact } from "../audit/redact.ts"
import { type AuditRecordsRow, loadCheckpoints, verifyStoredChain } from "../audit/store.ts"
import { type ApiRejected, rejected } from "./domain/record.ts"
import { answer, type Ctx, route, type RouteSpec } from "./route-kit.ts"

export interface AuditRouteDeps {
  readonly db: Kysely<any>
  /** Whether the zone exists (404 zone_not_found otherwise). */
  readonly zoneExists: (zone: string) => Promise<boolean>
  /** AUDIT_HMAC_KEY: without it verification checks links, Merkle roots and signatures, not MACs. */
  readonly hmacKey?: Buffer | undefined
  readonly checkpointPublicKey?: Buffer | undefined
}

/** Postgres away is a 503 (DbError); any other failure of a query is a bug: a 500. */
const read = <A>(f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (cause) => cause }).pipe(
    Effect.catch((cause) => (isUnavailable(cause) ? Effect.fail(new DbError({ cause })) : Effect.die(cause)))
  )

const LIMIT_MAX = 1000
const DECISIONS = new Set(["allow", "deny", "error"])

type AuditRow = Pick<AuditRecordsRow, "seq" | "id" | "recorded_at" | "occurred_at" | "source" | "kind" | "decision" | "request_id"
  | "session_id" | "client_id" | "jti" | "canonical">

const view = (r: AuditRow) => ({
  seq: Number(r.seq),
  id: r.id,
  recorded_at: r.recorded_at.toISOString(),
  occurred_at: r.occurred_at.toISOString(),
  source: r.source,
  kind: r.kind,
  decision: r.decision,
  request_id: r.request_id,
  session_id: r.session_id,
  client_id: r.client_id,
  jti: r.jti,
  record: redact((JSON.parse(r.canonical.toString("utf8")) as Entry).body)
})

const param = (q: URLSearchParams, name: string) =>
  Effect.gen(function*() {
    const v = q.get(name)
    if (v === null) return undefined
    if (v.length === 0 || v.length > 200) return yield* httpError(400, "invalid_request", `${name} must be 1-200 characters`)
    return v
  })

const time = (q: URLSearchParams, name: string) =>
  Effect.gen(function*() {
    const v = yield* param(q, name)
    if (v === undefined) return undefined
    const t = Date.parse(v)
    if (!/^\d{4}-\d{2}-\d{2}/.test(v) || Number.isNaN(t)) return yield* httpError(400, "invalid_request", `${name} must be an RFC 3339 time`)
    return new Date(t).toISOString()
  })

const positive = (q: URLSearchParams, name: string, fallback?: number) =>
  Effect.gen(function*() {
    const v = q.get(name)
    if (v === null) {
      if (fallback !== undefined) return fallback
      return yield* httpError(400, "invalid_request", `${name} is required`)
    }
    if (!/^\d{1,15}$/.test(v) || Number(v) < 1) return yield* httpError(400, "invalid_request", `${name} must be a positive integer`)
    return Number(v)
  })

export const auditRoutes = (deps: AuditRouteDeps): ReadonlyArray<RouteSpec> => {
  const hmacKey: KeyObject | undefined = deps.hmacKey ? createSecretKey(deps.hmacKey) : undefined
  const publicKey = deps.checkpointPublicKey ? publicKeyFromHex(deps.checkpointPublicKey.toString("hex")) : undefined
  const zoneOf = (ctx: Ctx<unknown>) =>
    Effect.gen(function*() {
      const zone = ctx.params.zone ?? ""
      if (!(yield* read(() => deps.zoneExists(zone)))) return yield* rejected(404, "zone_not_found", "no such zone")
      return zone
    })

  const list = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit",
    tag: "audit",
    summary: "The zone's audit records in chain order, filtered; `next_cursor` continues the list",
    status: 200,
    query: [
      { name: "from", description: "occurred at or after (RFC 3339)" },
      { name: "to", description: "occurred before (RFC 3339)" },
      { name: "request_id", description: "one request" },
      { name: "session_id", description: "one agent session" },
      { name: "agent_tree", description: "an agent session and all its descendants" },
      { name: "jti", description: "one mandate" },
      { name: "decision", description: "allow, deny or error" },
      { name: "event_type", description: "record kind or event type, e.g. token_exchange, AgentSpawned" },
      { name: "limit", description: `1-${LIMIT_MAX} (default 100)` },
      { name: "cursor", description: "the previous page's next_cursor" }
    ],
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const q = ctx.query
        const limit = yield* positive(q, "limit", 100)
        if (limit > LIMIT_MAX) return yield* httpError(400, "invalid_request", `limit must be 1-${LIMIT_MAX}`)
        const cursor = yield* param(q, "cursor")
        let after = 0
        if (cursor !== undefined) {
          const decoded = /^[A-Za-z0-9_-]+$/.test(cursor) ? Buffer.from(cursor, "base64url").toString("utf8") : ""
          if (!/^seq:\d{1,15}$/.test(decoded)) return yield* httpError(400, "invalid_request", "malformed cursor")
          after = Number(decoded.slice(4))
        }
        const decision = yield* param(q, "decision")
        if (decision !== undefined && !DECISIONS.has(decision)) return yield* httpError(400, "invalid_request", "decision must be allow, deny or error")
        const f = {
          from: yield* time(q, "from"),
          to: yield* time(q, "to"),
          request: yield* param(q, "request_id"),
          session: yield* param(q, "session_id"),
          tree: yield* param(q, "agent_tree"),
          jti: yield* param(q, "jti"),
          kind: yield* param(q, "event_type")
        }
        const { rows } = yield* read(() =>
          sql<AuditRow>`
            select seq, id, recorded_at, occurred_at, source, kind, decision, request_id, session_id, client_id, jti, canonical
            from audit_records where zone = ${zone} and seq > ${after}
              ${f.from ? sql`and occurred_at >= ${f.from}::timestamptz` : sql``}
              ${f.to ? sql`and occurred_at < ${f.to}::timestamptz` : sql``}
              ${f.request ? sql`and request_id = ${f.request}` : sql``}
              ${f.session ? sql`and session_id = ${f.session}` : sql``}
              ${f.jti ? sql`and jti = ${f.jti}` : sql``}
              ${decision ? sql`and decision = ${decision}` : sql``}
              ${f.kind ? sql`and kind = ${f.kind}` : sql``}
              ${f.tree ? sql`and session_id in (
                with recursive tree as (
                  select id from agent_sessions where id = ${f.tree} and zone_id = ${zone}
                  union all select a.id from agent_sessions a join tree t on a.parent_id = t.id)
                select id from tree)` : sql``}
            order by seq limit ${limit + 1}`.execute(deps.db)
        )
        const page = rows.slice(0, limit)
        const more = rows.length > limit
        return answer({
          items: page.map(view),
          next_cursor: more ? Buffer.from(`seq:${page.at(-1)!.seq}`).toString("base64url") : null
        }, 200)
      })
  })

  const request = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit/requests/{id}",
    tag: "audit",
    summary: "One request's full story: every record and event carrying its request id, in time order",
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const id = ctx.params.id!
        if (id.length > 200) return yield* httpError(400, "invalid_request", "the request id is too long")
        const { rows } = yield* read(() =>
          sql<AuditRow>`
            select seq, id, recorded_at, occurred_at, source, kind, decision, request_id, session_id, client_id, jti, canonical
            from audit_records where zone = ${zone} and request_id = ${id} order by occurred_at, seq limit 10000`.execute(deps.db)
        )
        if (rows.length === 0) return yield* rejected(404, "audit_request_not_found", "no audit record carries this request id in this zone")
        const records = rows.map(view)
        return answer({
          request_id: id,
          sources: [...new Set(records.map((r) => r.source))],
          decision: records.find((r) => r.decision !== null)?.decision ?? null,
          started_at: records[0]!.occurred_at,
          ended_at: records.at(-1)!.occurred_at,
          records
        }, 200)
      })
  })

  const verify = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit/verify",
    tag: "audit",
    summary: "Verifies the zone's chain: MACs, links, Merkle roots against signed checkpoints; names the first broken record",
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const r = yield* read(() => verifyStoredChain(deps.db, zone, { hmacKey, publicKey }))
        return answer({
          zone,
          ok: r.ok,
          records: r.records,
          first_seq: r.firstSeq,
          last_seq: r.lastSeq,
          root: r.root,
          checkpoints_verified: r.checkpointsVerified,
          macs_checked: r.macsChecked,
          signatures_checked: r.signaturesChecked,
          first_broken: r.firstBad ? { seq: r.firstBad.seq, id: r.firstBad.id, reason: r.firstBad.reason } : null
        }, 200)
      })
  })

  const proofError = (e: unknown): Effect.Effect<never, ApiRejected | DbError> =>
    e instanceof ProofUnavailable
      ? Effect.fail(rejected(409, "proof_unavailable", e.message))
      : isUnavailable(e) ? Effect.fail(new DbError({ cause: e })) : Effect.die(e)

  const checkpoints = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit/checkpoints",
    tag: "audit",
    summary: "The zone's signed checkpoints (tree size, Merkle root, Ed25519 signature)",
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const cps = yield* read(() => loadCheckpoints(deps.db, zone))
        return answer({
          items: cps.map((c) => ({ tree_size: c.treeSize, root: c.root.toString("hex"), signed_at: c.signedAt, key_id: c.keyId, signature: c.signature.toString("hex") }))
        }, 200)
      })
  })

  const inclusion = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit/proofs/inclusion",
    tag: "audit",
    summary: "RFC 9162 inclusion proof of record `seq` in the tree of `tree_size` records",
    status: 200,
    query: [{ name: "seq", description: "the record" }, { name: "tree_size", description: "a checkpoint's tree size" }],
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const seq = yield* positive(ctx.query, "seq")
        const size = yield* positive(ctx.query, "tree_size")
        const p = yield* Effect.tryPromise({ try: () => inclusionProofFor(deps.db, zone, seq, size), catch: (e) => e }).pipe(Effect.catch(proofError))
        return answer({ seq: p.seq, tree_size: p.treeSize, leaf_hash: p.leafHash, path: p.path }, 200)
      })
  })

  const consistency = route({
    method: "GET",
    path: "/v1/zones/{zone}/audit/proofs/consistency",
    tag: "audit",
    summary: "RFC 9162 consistency proof between the trees of `from` and `to` records",
    status: 200,
    query: [{ name: "from", description: "the older tree size" }, { name: "to", description: "the newer tree size" }],
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx)
        const from = yield* positive(ctx.query, "from")
        const to = yield* positive(ctx.query, "to")
        const p = yield* Effect.tryPromise({ try: () => consistencyProofFor(deps.db, zone, from, to), catch: (e) => e }).pipe(Effect.catch(proofError))
        return answer({ from: p.from, to: p.to, path: p.path }, 200)
      })
  })

  return [list, request, verify, checkpoints, inclusion, consistency]
}

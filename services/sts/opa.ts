// The sts's view of OPA: how each zone's policies are named there, and the few REST calls the
// sync and the decisions make (Policy API: list, PUT, DELETE; Data API: evaluate).
//
// Zones apart on one OPA. Every policy is written as `package caracal.authz`; a zone's active
// policy set version is loaded under a package of its own,
//     caracal.zones.<z>.<g>.authz          <z> = zoneSegment(zone id), <g> = versionSegment(set version id)
// (references to `data.caracal.authz` rewritten with it, policies.ts rewriteModule), and one
// generated module per zone points the zone's decision package at the version being served:
//     package caracal.zones.<z>.authz
//     result := data.caracal.zones.<z>.<g>.authz.result
// Decisions read `data.caracal.zones.<z>.authz.result`. Switching a zone to another version is
// then a single PUT of that pointer, after the new version's modules are all in: OPA never
// holds two versions' `result` rules in one package (which it accepts, then fails every
// evaluation with a conflict), nor a half-loaded version.
//
// Module ids: `<ns>/zones/<z>/active` (the pointer) and `<ns>/zones/<z>/<g>/<policy id>/<version id>`,
// where <ns> is REDIS_KEY_PREFIX ("caracal"): a sync deletes only modules under its own
// `<ns>/zones/`, so deployments (or test runs) sharing one OPA leave each other's alone.
import { Schema } from "effect"
import http from "node:http"
import https from "node:https"
import { v7 as uuidv7 } from "uuid"
import { keepAliveAgent, keepAliveHttpsAgent } from "../../core/http/agents.ts"

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/**
 * A Rego identifier standing for an id, one-to-one: a canonical (lowercase) UUID is the letter
 * and its 32 hex digits; anything else is the letter, `_` and the hex of its UTF-8 bytes.
 * Package path segments must be identifiers (OPA also takes quoted ones, but then the Data API
 * path and every reference would have to quote them too).
 */
const segment = (letter: string, id: string) =>
  UUID.test(id) ? `${letter}${id.replaceAll("-", "")}` : `${letter}_${Buffer.from(id, "utf8").toString("hex")}`

export const zoneSegment = (zoneId: string) => segment("z", zoneId)
export const versionSegment = (setVersionId: string) => segment("v", setVersionId)

/** The package a zone's decisions are read from. */
export const zonePackage = (zoneId: string) => `caracal.zones.${zoneSegment(zoneId)}.authz`
/** The package one policy set version of a zone is loaded under. */
export const versionPackage = (zoneId: string, setVersionId: string) =>
  `caracal.zones.${zoneSegment(zoneId)}.${versionSegment(setVersionId)}.authz`
/** The Data API path of a zone's decision. */
export const decisionPath = (zoneId: string) => `caracal/zones/${zoneSegment(zoneId)}/authz/result`

/** Every module this deployment loads starts with this. */
export const modulesPrefix = (ns: string) => `${ns}/zones/`
export const pointerId = (ns: string, zoneId: string) => `${ns}/zones/${zoneSegment(zoneId)}/active`
export const policyModuleId = (ns: string, zoneId: string, setVersionId: string, policyId: string, versionId: string) =>
  `${ns}/zones/${zoneSegment(zoneId)}/${versionSegment(setVersionId)}/${policyId}/${versionId}`

export const pointerModule = (zoneId: string, setVersionId: string) =>
  `package ${zonePackage(zoneId)}\n\n# written by the sts: the zone's active policy set version ${setVersionId}\n` +
  `result := data.${versionPackage(zoneId, setVersionId)}.result\n`

/**
 * A marker module whose absence tells a reconciler that OPA lost what it was given (restarted
 * empty). It also holds the batch rule (opa-batch.ts): `decisions[i]` is zone `items[i].zone`'s
 * result on `items[i].input` — several exchanges' decisions in one request, each evaluated
 * exactly as if asked alone (its own input, its own zone's package).
 */
export const markerId = (ns: string) => `${ns}/sync-marker`
export const markerPath = (ns: string) => `caracal/sync/${segment("n", ns)}/loaded`
export const batchPath = (ns: string) => `caracal/sync/${segment("n", ns)}/decisions`
export const markerModule = (ns: string) =>
  `package caracal.sync.${segment("n", ns)}\n\nloaded := true\n\n` +
  `decisions[i] := r if {\n  some i, item in input.items\n  r := data.caracal.zones[item.zone].authz.result with input as item.input\n}\n`

// ---------------------------------------------------------------- the REST calls

/** OPA could not answer (down, slow, an error, an unexpected answer): nothing may be allowed on it. */
export class PolicyUnavailable extends Schema.TaggedError<PolicyUnavailable>()("PolicyUnavailable", {
  reason: Schema.String
}) {}

export interface OpaAnswer {
  readonly status: number
  readonly body: unknown
}

/** Management calls compile in OPA: they get longer than a decision. */
const MANAGEMENT_TIMEOUT_MS = 10_000

export interface Opa {
  readonly baseUrl: string
  /** Every module OPA holds: id → text. */
  readonly list: () => Promise<ReadonlyMap<string, string>>
  /** 200, or 400 with OPA's compile errors; throws when OPA cannot be asked. */
  readonly put: (id: string, text: string) => Promise<OpaAnswer>
  /** 200, 404 (not there) or 400 (another module still needs it); throws when OPA cannot be asked. */
  readonly remove: (id: string) => Promise<OpaAnswer>
  /** POST /v1/data/<path> {input}; throws when OPA cannot be asked or the signal fires. */
  readonly evaluate: (path: string, input: unknown, signal: AbortSignal) => Promise<OpaAnswer>
}

const parse = (text: string): unknown => {
  if (text === "") return undefined
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

// one path segment per id segment: OPA decodes them, and takes the ids with their slashes
const policyUrl = (base: string, id: string) => `${base}/v1/policies/${id.split("/").map(encodeURIComponent).join("/")}`

export const makeOpa = (opaUrl: string): Opa => {
  const base = opaUrl.replace(/\/+$/, "")
  const call = async (url: string, init: RequestInit): Promise<OpaAnswer> => {
    const res = await fetch(url, init)
    return { status: res.status, body: parse(await res.text()) }
  }
  const management = () => AbortSignal.timeout(MANAGEMENT_TIMEOUT_MS)
  const decide = decisionPost(base)
  return {
    baseUrl: base,
    list: async () => {
      const res = await call(`${base}/v1/policies`, { signal: management() })
      const result = (res.body as { result?: unknown } | undefined)?.result
      if (res.status !== 200 || !Array.isArray(result)) throw new Error(`OPA listed its policies with status ${res.status}`)
      return new Map(result.map((p: { id: string; raw: string }) => [p.id, p.raw]))
    },
    put: (id, text) =>
      call(policyUrl(base, id), { method: "PUT", body: text, headers: { "content-type": "text/plain" }, signal: management() }),
    remove: (id) => call(policyUrl(base, id), { method: "DELETE", signal: management() }),
    evaluate: (path, input, signal) => decide(`${base}/v1/data/${path}`, JSON.stringify({ input }), signal)
  }
}

/** A decision's answer is a small JSON document; anything larger is not OPA answering us. */
const DECISION_MAX_BYTES = 1024 * 1024

/**
 * POST of a decision over node:http with its own keep-alive pool: one per token exchange, so
 * the client's cost is the exchange's — fetch (undici) spent half a millisecond of CPU on each,
 * more than the signature.
 */
const decisionPost = (base: string) => {
  const lib = new URL(base).protocol === "https:" ? https : http
  const agent = lib === https ? keepAliveHttpsAgent({ maxSockets: 64 }) : keepAliveAgent({ maxSockets: 64 })
  return (url: string, body: string, signal: AbortSignal) =>
    new Promise<OpaAnswer>((resolve, reject) => {
      const req = lib.request(url, {
        method: "POST",
        agent,
        signal,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
      }, (res) => {
        const chunks: Array<Buffer> = []
        let size = 0
        res.on("data", (c: Buffer) => {
          size += c.length
          if (size > DECISION_MAX_BYTES) res.destroy(new Error(`OPA answered a decision with more than ${DECISION_MAX_BYTES} bytes`))
          else chunks.push(c)
        })
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: parse(Buffer.concat(chunks).toString("utf8")) }))
        res.on("error", reject)
      })
      req.on("error", reject)
      req.end(body)
    })
}

/** What a decision is: only an explicit `allow: true` in the policy's result grants. */
export interface Decision {
  readonly allow: boolean
  readonly reason: string
  /** OPA's decision_id when it gives one (decision logs on), else a fresh UUIDv7. */
  readonly decisionId: string
}

const REASON_MAX = 200

/** Reads OPA's answer to a decision; undefined when the zone's package has no result (nothing loaded). */
export const readDecision = (body: unknown, newId: () => string): Decision | undefined => {
  const b = (typeof body === "object" && body !== null ? body : {}) as { result?: unknown; decision_id?: unknown }
  const decisionId = typeof b.decision_id === "string" && b.decision_id !== "" ? b.decision_id : newId()
  if (b.result === undefined) return undefined
  const r = (typeof b.result === "object" && b.result !== null && !Array.isArray(b.result) ? b.result : {}) as {
    allow?: unknown
    reason?: unknown
  }
  const allow = r.allow === true
  const reason = typeof r.reason === "string" && r.reason !== ""
    ? r.reason.slice(0, REASON_MAX)
    : allow ? "policy_allowed" : "policy_denied"
  return { allow, reason, decisionId }
}

export const newDecisionId = (): string => uuidv7()

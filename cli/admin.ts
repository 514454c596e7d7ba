// `caracal zones|applications|resources|providers|credentials|bindings|policies|
// policy-sets|grants …`: the api's control plane with CARACAL_ADMIN_TOKEN. One table of
// kinds drives list/get/create/update/archive; fields come as `--set key=value` (JSON
// when it parses, `@file` reads a file) or a whole `--data` body.
import { readFileSync } from "node:fs"
import { call } from "../sdk/src/http.ts"
import { ClientConfigError, type ClientEnv } from "./client-config.ts"
import { type Column, type Out, printRows, UsageError } from "./output.ts"

export interface Kind {
  /** The command and the api's path segment. */
  readonly name: string
  readonly singular: string
  /** Zones live at /v1/zones; every other kind inside a zone. */
  readonly zoned: boolean
  readonly columns: ReadonlyArray<string>
  /** What DELETE does to it (the api keeps the history either way). */
  readonly endVerb: "archive" | "revoke" | "delete"
}

export const KINDS: ReadonlyArray<Kind> = [
  { name: "zones", singular: "zone", zoned: false, columns: ["id", "slug", "name", "status", "key_status", "created_at"], endVerb: "archive" },
  { name: "applications", singular: "application", zoned: true, columns: ["id", "name", "status", "allowed_scopes", "created_at"], endVerb: "archive" },
  { name: "resources", singular: "resource", zoned: true, columns: ["id", "identifier", "scopes", "upstream_url", "status"], endVerb: "archive" },
  { name: "providers", singular: "provider", zoned: true, columns: ["id", "name", "header", "status"], endVerb: "archive" },
  { name: "credentials", singular: "credential", zoned: true, columns: ["id", "name", "provider_id", "status"], endVerb: "revoke" },
  { name: "bindings", singular: "binding", zoned: true, columns: ["id", "resource_id", "application_id", "credential_id", "status"], endVerb: "delete" },
  { name: "policies", singular: "policy", zoned: true, columns: ["id", "name", "status", "created_at"], endVerb: "archive" },
  { name: "policy-sets", singular: "policy set", zoned: true, columns: ["id", "name", "status", "active_version_id"], endVerb: "archive" },
  { name: "grants", singular: "grant", zoned: true, columns: ["id", "application_id", "user_id", "resource_id", "scopes", "status"], endVerb: "revoke" }
]

export interface AdminContext {
  readonly env: ClientEnv
  readonly out: Out
  readonly json: boolean
  /** --zone, else CARACAL_ZONE_ID, else caracal.toml's zone_id. */
  readonly zone: string | undefined
}

const tokenOf = (env: ClientEnv) => {
  if (env.adminToken === undefined) throw new ClientConfigError("CARACAL_ADMIN_TOKEN is not set (the api's ADMIN_TOKEN; npm start keeps it in .dev.env)")
  return env.adminToken
}

const basePath = (kind: Kind, c: AdminContext) => {
  if (!kind.zoned) return "/v1/zones"
  if (c.zone === undefined) throw new UsageError(`${kind.name} live in a zone: pass --zone, or set CARACAL_ZONE_ID (or zone_id in caracal.toml)`)
  return `/v1/zones/${encodeURIComponent(c.zone)}/${kind.name}`
}

export const api = async <T = any>(c: AdminContext, method: string, path: string, opts: { json?: unknown; headers?: Record<string, string> } = {}) =>
  call<T>({
    service: "api",
    method,
    url: `${c.env.apiUrl}${path}`,
    headers: { authorization: `Bearer ${tokenOf(c.env)}`, ...opts.headers },
    json: opts.json,
    idempotent: method === "GET"
  })

/** `key=value` pairs into a body: the value as JSON when it parses (lists, numbers, true), else text; `@file` reads the file. */
export const bodyOf = (sets: ReadonlyArray<string>, data: string | undefined): Record<string, unknown> => {
  const read = (v: string) => {
    if (!v.startsWith("@")) return v
    try {
      return readFileSync(v.slice(1), "utf8")
    } catch (e) {
      throw new UsageError(`cannot read ${v.slice(1)}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`)
    }
  }
  let body: Record<string, unknown> = {}
  if (data !== undefined) {
    try {
      const parsed = JSON.parse(read(data))
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object")
      body = parsed
    } catch (e) {
      if (e instanceof UsageError) throw e
      throw new UsageError("--data must be a JSON object (or @file holding one)")
    }
  }
  for (const s of sets) {
    const i = s.indexOf("=")
    if (i <= 0) throw new UsageError(`--set ${s}: expected key=value`)
    const raw = read(s.slice(i + 1))
    let value: unknown = raw
    if (!s.slice(i + 1).startsWith("@")) {
      try {
        value = JSON.parse(raw)
      } catch {
        value = raw
      }
    }
    // a comma list for list fields people type by hand: scopes=read,write
    if (typeof value === "string" && /^(scopes|allowed_scopes|traits)$/.test(s.slice(0, i))) value = value.split(",").map((x) => x.trim()).filter(Boolean)
    body[s.slice(0, i)] = value
  }
  return body
}

const columnsOf = (kind: Kind): ReadonlyArray<Column<Record<string, unknown>>> =>
  kind.columns.map((k) => ({ header: k.toUpperCase(), value: (r) => (Array.isArray(r[k]) ? (r[k] as Array<unknown>).join(",") : r[k]) }))

/** One record as aligned `key  value` lines (or one JSON line). */
export const printRecord = (out: Out, json: boolean, record: Record<string, unknown>) => {
  if (json) return out(JSON.stringify(record))
  const width = Math.max(...Object.keys(record).map((k) => k.length))
  for (const [k, v] of Object.entries(record)) {
    out(`${k.padEnd(width)}  ${v === null || v === undefined ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v)}`)
  }
}

export const listRecords = async (c: AdminContext, kind: Kind, o: { limit: number; status?: string | undefined; all: boolean }) => {
  const rows: Array<Record<string, unknown>> = []
  let cursor: string | null = null
  do {
    const q = new URLSearchParams({ limit: String(o.limit) })
    if (o.status) q.set("status", o.status)
    if (cursor) q.set("cursor", cursor)
    const { body } = await api<{ items: Array<Record<string, unknown>>; next_cursor: string | null }>(c, "GET", `${basePath(kind, c)}?${q}`)
    rows.push(...body.items)
    cursor = body.next_cursor
  } while (o.all && cursor !== null)
  printRows(c.out, rows, { json: c.json, columns: columnsOf(kind), toJson: (r) => r, empty: `no ${kind.name}` })
  if (cursor !== null && !c.json) c.out(`(more: --all, or --limit up to 1000)`)
}

const one = (kind: Kind, c: AdminContext, id: string) => (kind.zoned ? `${basePath(kind, c)}/${encodeURIComponent(id)}` : `/v1/zones/${encodeURIComponent(id)}`)

export const getRecord = async (c: AdminContext, kind: Kind, id: string) => printRecord(c.out, c.json, (await api(c, "GET", one(kind, c, id))).body)

export const createRecord = async (c: AdminContext, kind: Kind, body: Record<string, unknown>) => {
  const { body: created } = await api(c, "POST", basePath(kind, c), { json: body, headers: { "idempotency-key": crypto.randomUUID() } })
  printRecord(c.out, c.json, created)
  // the one secret the CLI prints, by design: the api shows a generated client secret once
  if (!c.json && typeof created.client_secret === "string") c.out("(the client secret is shown once: keep it now)")
}

/** PATCH with the record's current ETag, so an update never overwrites a change it did not see. */
export const updateRecord = async (c: AdminContext, kind: Kind, id: string, body: Record<string, unknown>) => {
  if (Object.keys(body).length === 0) throw new UsageError("nothing to update: pass --set key=value or --data")
  const current = await api(c, "GET", one(kind, c, id))
  const etag = current.headers.get("etag") ?? `"${current.body.version}"`
  printRecord(c.out, c.json, (await api(c, "PATCH", one(kind, c, id), { json: body, headers: { "if-match": etag } })).body)
}

export const archiveRecord = async (c: AdminContext, kind: Kind, id: string, reason: string | undefined) => {
  const { body } = await api(c, "DELETE", one(kind, c, id), { json: reason ? { reason } : {} })
  if (c.json) return c.out(JSON.stringify(body))
  c.out(`${kind.singular} ${id}: ${body.status}`)
}

/** POST to a sub-route (versions, activate, secret, keys/rotate) and print the answer. */
export const action = async (c: AdminContext, kind: Kind, id: string, suffix: string, body: Record<string, unknown>) =>
  printRecord(c.out, c.json, (await api(c, "POST", `${one(kind, c, id)}/${suffix}`, { json: body, headers: { "idempotency-key": crypto.randomUUID() } })).body)

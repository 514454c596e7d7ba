// The client side's configuration: caracal.toml (found as the seed says: CARACAL_CONFIG,
// then ./caracal.toml, then $XDG_CONFIG_HOME/caracal/caracal.toml), a .env file
// (CARACAL_ENV_FILE, default ./.env), and the CARACAL_* variables with their defaults.
// A bad file is reported with its path, line and field; secrets are never printed.
import { existsSync, readFileSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { parse, TomlError } from "smol-toml"

/** A configuration problem: exit code 2, its message printed as it is. */
export class ClientConfigError extends Error {
  readonly _tag = "ClientConfigError"
}

export interface CredentialEntry {
  readonly env: string
  readonly resource: string
}

export interface OptionalCredentialEntry extends CredentialEntry {
  readonly onFailure: "warn" | "error"
}

export interface CaracalToml {
  readonly file: string
  readonly zoneUrl: string
  readonly zoneId: string
  readonly applicationId: string
  readonly appClientSecret: string
  readonly continueOnFailure: boolean
  readonly credentials: ReadonlyArray<CredentialEntry>
  readonly optionalCredentials: ReadonlyArray<OptionalCredentialEntry>
  /** Default `block`: an MCP server the sts refuses is not launched (fail closed). */
  readonly mcpMode: "block" | "log"
}

type Env = Record<string, string | undefined>

const nonEmpty = (v: string | undefined) => (v === undefined || v.trim() === "" ? undefined : v.trim())

/** Where caracal.toml is, in the seed's order; undefined when there is none. */
export const discoverConfig = (env: Env = process.env, cwd = process.cwd()): string | undefined => {
  const explicit = nonEmpty(env.CARACAL_CONFIG)
  if (explicit !== undefined) {
    const file = path.resolve(cwd, explicit)
    // a path the operator named and that is not there is an error, not a reason to look elsewhere
    if (!existsSync(file)) throw new ClientConfigError(`CARACAL_CONFIG: ${file} does not exist`)
    return file
  }
  const local = path.join(cwd, "caracal.toml")
  if (existsSync(local)) return local
  const xdg = nonEmpty(env.XDG_CONFIG_HOME) ?? path.join(env.HOME ?? os.homedir(), ".config")
  const user = path.join(xdg, "caracal", "caracal.toml")
  return existsSync(user) ? user : undefined
}

// ------------------------------------------------------------------ caracal.toml

/**
 * The line of a field, for messages: smol-toml reports positions of syntax errors only,
 * so a field is found by scanning for its key under its table header ([[credentials]]
 * counted by occurrence).
 */
const lineOf = (source: string, table: string | undefined, index: number | undefined, key: string | undefined): number | undefined => {
  const lines = source.split(/\r?\n/)
  let current: string | undefined = undefined
  let seen = -1
  let inTarget = table === undefined
  let tableLine: number | undefined
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim()
    const header = /^\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?/.exec(line)
    if (header) {
      current = header[1]
      if (current === table) seen++
      inTarget = table !== undefined && current === table && (index === undefined || seen === index)
      if (inTarget) tableLine = i + 1
      continue
    }
    if (inTarget && key !== undefined && new RegExp(`^"?${key}"?\\s*=`).test(line)) return i + 1
  }
  return tableLine
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const TOP = new Set(["zone_url", "zone_id", "application_id", "app_client_secret", "continue_on_failure", "credentials", "optional_credentials", "mcp_governance"])

export const parseCaracalToml = (file: string, source: string): CaracalToml => {
  const fail = (field: string, problem: string, table?: string, index?: number, key?: string): never => {
    const line = lineOf(source, table, index, key ?? (table === undefined ? field : undefined))
    throw new ClientConfigError(`${file}${line === undefined ? "" : `:${line}`}: ${field}: ${problem}`)
  }
  let doc: Record<string, unknown>
  try {
    doc = parse(source) as Record<string, unknown>
  } catch (e) {
    if (e instanceof TomlError) throw new ClientConfigError(`${file}:${e.line}:${e.column}: invalid TOML: ${e.message.split("\n")[0]}`)
    throw e
  }
  for (const k of Object.keys(doc)) if (!TOP.has(k)) fail(k, "unknown field")

  const str = (field: string, v: unknown, where: { table?: string; index?: number; key?: string } = {}): string => {
    if (v === undefined) return fail(field, "is required", where.table, where.index, where.key)
    if (typeof v !== "string" || v.trim() === "") return fail(field, "must be a non-empty string", where.table, where.index, where.key)
    return v.trim()
  }
  const zoneUrl = str("zone_url", doc.zone_url)
  if (!/^https?:\/\/[^\s/]+/.test(zoneUrl)) fail("zone_url", "must be an http(s) URL")
  const continueOnFailure = doc.continue_on_failure ?? false
  if (typeof continueOnFailure !== "boolean") fail("continue_on_failure", "must be true or false")

  const entries = (table: "credentials" | "optional_credentials") => {
    const v = doc[table]
    if (v === undefined) return []
    if (!Array.isArray(v)) return fail(table, `must be an array of tables ([[${table}]])`, table)
    return v.map((raw: unknown, index) => {
      const at = (key: string) => ({ table, index, key })
      if (typeof raw !== "object" || raw === null) return fail(`${table}[${index}]`, "must be a table", table, index)
      const e = raw as Record<string, unknown>
      const allowed = table === "credentials" ? ["env", "resource"] : ["env", "resource", "on_failure"]
      for (const k of Object.keys(e)) if (!allowed.includes(k)) fail(`${table}[${index}].${k}`, "unknown field", table, index, k)
      const env = str(`${table}[${index}].env`, e.env, at("env"))
      if (!ENV_NAME.test(env)) fail(`${table}[${index}].env`, "must be an environment variable name", table, index, "env")
      const resource = str(`${table}[${index}].resource`, e.resource, at("resource"))
      if (table === "credentials") return { env, resource }
      const onFailure = str(`${table}[${index}].on_failure`, e.on_failure, at("on_failure"))
      if (onFailure !== "warn" && onFailure !== "error") fail(`${table}[${index}].on_failure`, 'must be "warn" or "error"', table, index, "on_failure")
      return { env, resource, onFailure: onFailure as "warn" | "error" }
    })
  }

  let mcpMode: "block" | "log" = "block"
  if (doc.mcp_governance !== undefined) {
    const m = doc.mcp_governance
    if (typeof m !== "object" || m === null || Array.isArray(m)) fail("mcp_governance", "must be a table ([mcp_governance])")
    const g = m as Record<string, unknown>
    for (const k of Object.keys(g)) if (k !== "mode") fail(`mcp_governance.${k}`, "unknown field", "mcp_governance", undefined, k)
    if (g.mode !== undefined) {
      if (g.mode !== "block" && g.mode !== "log") fail("mcp_governance.mode", 'must be "block" or "log"', "mcp_governance", undefined, "mode")
      mcpMode = g.mode as "block" | "log"
    }
  }

  return {
    file,
    zoneUrl: zoneUrl.replace(/\/+$/, ""),
    zoneId: str("zone_id", doc.zone_id),
    applicationId: str("application_id", doc.application_id),
    appClientSecret: str("app_client_secret", doc.app_client_secret),
    continueOnFailure: continueOnFailure as boolean,
    credentials: entries("credentials") as Array<CredentialEntry>,
    optionalCredentials: entries("optional_credentials") as Array<OptionalCredentialEntry>,
    mcpMode
  }
}

export const loadCaracalToml = (file: string): CaracalToml => {
  let source: string
  try {
    source = readFileSync(file, "utf8")
  } catch (e) {
    throw new ClientConfigError(`${file}: cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`)
  }
  return parseCaracalToml(file, source)
}

// ------------------------------------------------------------------ .env

/** KEY=VALUE lines (optionally `export `, quoted values, # comments); a bad line names its file and line. */
export const parseEnvFile = (file: string, source: string): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [i, raw] of source.split(/\r?\n/).entries()) {
    const line = raw.trim()
    if (line === "" || line.startsWith("#")) continue
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line)
    if (!m) throw new ClientConfigError(`${file}:${i + 1}: expected KEY=VALUE`)
    let value = m[2]!
    const quote = value[0]
    if (quote === '"' || quote === "'") {
      const end = value.indexOf(quote, 1)
      if (end < 0) throw new ClientConfigError(`${file}:${i + 1}: ${m[1]}: unterminated quote`)
      value = value.slice(1, end)
      if (quote === '"') value = value.replace(/\\n/g, "\n").replace(/\\"/g, '"')
    } else {
      value = value.replace(/\s+#.*$/, "")
    }
    out[m[1]!] = value
  }
  return out
}

/**
 * Loads CARACAL_ENV_FILE (which must exist when set), else ./.env when present, into
 * `env`; variables already set win, as a shell's export should.
 */
export const loadEnvFile = (env: Env = process.env, cwd = process.cwd()): string | undefined => {
  const named = nonEmpty(env.CARACAL_ENV_FILE)
  const file = named === undefined ? path.join(cwd, ".env") : path.resolve(cwd, named)
  if (!existsSync(file)) {
    if (named !== undefined) throw new ClientConfigError(`CARACAL_ENV_FILE: ${file} does not exist`)
    return undefined
  }
  for (const [k, v] of Object.entries(parseEnvFile(file, readFileSync(file, "utf8")))) if (env[k] === undefined) env[k] = v
  return file
}

// ------------------------------------------------------------------ CARACAL_* variables

/** The seed's client variables, with their defaults; README's CLI table is generated from this. */
export const clientVariables = [
  { name: "CARACAL_CONFIG", default: undefined, doc: "Override path to caracal.toml" },
  { name: "CARACAL_ENV_FILE", default: "./.env", doc: "Override path to .env file loaded by the CLI" },
  { name: "CARACAL_API_URL", default: "http://localhost:3000", doc: "API base URL (else caracal.toml zone_url)" },
  { name: "CARACAL_COORDINATOR_URL", default: "http://localhost:4000", doc: "Coordinator base URL" },
  { name: "CARACAL_STS_URL", default: undefined, doc: "STS base URL for token exchanges (default: zone_url's /oauth/2/token pass-through)" },
  { name: "CARACAL_COORDINATOR_TOKEN", default: undefined, doc: "JWT with agent:lifecycle scope for coordinator routes (agents, delegations)" },
  { name: "CARACAL_ADMIN_TOKEN", default: undefined, doc: "Bearer token for admin API routes" },
  { name: "CARACAL_ZONE_ID", default: undefined, doc: "Default zone ID for admin commands (else caracal.toml zone_id)" },
  { name: "CARACAL_APPLICATION_ID", default: undefined, doc: "Application ID for SDK initialization" },
  { name: "CARACAL_SUBJECT_TOKEN", default: undefined, doc: "Subject token for SDK initialization" },
  { name: "CARACAL_GATEWAY_URL", default: undefined, doc: "Gateway URL for resource routing" },
  { name: "CARACAL_RESOURCES", default: undefined, doc: "Comma-separated resource bindings: resourceId=prefix,resourceId2=prefix2" },
  { name: "XDG_CONFIG_HOME", default: "~/.config", doc: "Base directory for caracal.toml discovery" },
  { name: "XDG_DATA_HOME", default: "~/.local/share", doc: "Base directory for runtime assets ($XDG_DATA_HOME/caracal: the demo zone npm start made)" }
] as const

export interface ClientEnv {
  readonly apiUrl: string
  readonly coordinatorUrl: string
  readonly stsUrl: string | undefined
  readonly adminToken: string | undefined
  readonly coordinatorToken: string | undefined
  readonly zoneId: string | undefined
  readonly dataDir: string
  /** The caracal.toml in use, if one was found. */
  readonly toml: CaracalToml | undefined
}

const url = (name: string, v: string) => {
  if (!/^https?:\/\/[^\s/]+/.test(v)) throw new ClientConfigError(`${name}: must be an http(s) URL`)
  return v.replace(/\/+$/, "")
}

/** Variables win over caracal.toml, which wins over the defaults. */
export const loadClientEnv = (env: Env = process.env, cwd = process.cwd(), opts: { skipToml?: boolean } = {}): ClientEnv => {
  const file = opts.skipToml ? undefined : discoverConfig(env, cwd)
  const toml = file === undefined ? undefined : loadCaracalToml(file)
  const get = (n: string) => nonEmpty(env[n])
  return {
    apiUrl: url("CARACAL_API_URL", get("CARACAL_API_URL") ?? toml?.zoneUrl ?? "http://localhost:3000"),
    coordinatorUrl: url("CARACAL_COORDINATOR_URL", get("CARACAL_COORDINATOR_URL") ?? "http://localhost:4000"),
    stsUrl: get("CARACAL_STS_URL") === undefined ? undefined : url("CARACAL_STS_URL", get("CARACAL_STS_URL")!),
    adminToken: get("CARACAL_ADMIN_TOKEN"),
    coordinatorToken: get("CARACAL_COORDINATOR_TOKEN"),
    zoneId: get("CARACAL_ZONE_ID") ?? toml?.zoneId,
    dataDir: path.join(get("XDG_DATA_HOME") ?? path.join(env.HOME ?? os.homedir(), ".local", "share"), "caracal"),
    toml
  }
}

const CLIENT_BEGIN = "<!-- client-variables:begin (generated by npm run docs:config) -->"
const CLIENT_END = "<!-- client-variables:end -->"

/** The README with its client-variable table regenerated from `clientVariables`. */
export const withClientTable = (readme: string): string => {
  const start = readme.indexOf(CLIENT_BEGIN)
  const end = readme.indexOf(CLIENT_END)
  if (start < 0 || end < start) throw new Error(`README.md lacks the ${CLIENT_BEGIN} … ${CLIENT_END} markers`)
  const rows = clientVariables.map((v) => `| \`${v.name}\` | ${v.default === undefined ? "—" : `\`${v.default}\``} | ${v.doc} |`)
  const table = ["| variable | default | description |", "|---|---|---|", ...rows].join("\n")
  return `${readme.slice(0, start)}${CLIENT_BEGIN}\n${table}\n${readme.slice(end)}`
}

/**
 * `caracal config init --demo`: ./caracal.toml for the zone `npm start` bootstrapped, from
 * the file it keeps in the data directory; one credential for the demo resource.
 */
export const writeDemoConfig = (env: ClientEnv, cwd: string, force: boolean): string => {
  const demoFile = path.join(env.dataDir, "demo.json")
  if (!existsSync(demoFile)) throw new ClientConfigError(`${demoFile} does not exist: run npm start first (XDG_DATA_HOME locates it)`)
  const demo = JSON.parse(readFileSync(demoFile, "utf8")) as { zone_id?: string; application_id?: string; client_secret?: string | null; resource?: string }
  if (!demo.zone_id || !demo.application_id || !demo.client_secret || !demo.resource) {
    throw new ClientConfigError(`${demoFile}: incomplete (the demo application's secret is shown once; delete the demo zone's data and run npm start again)`)
  }
  const file = path.join(cwd, "caracal.toml")
  if (existsSync(file) && !force) throw new ClientConfigError(`${file} exists (--force replaces it)`)
  const q = JSON.stringify
  const text = [
    "# written by caracal config init --demo for the zone npm start made",
    `zone_url = ${q(env.apiUrl)}`,
    `zone_id = ${q(demo.zone_id)}`,
    `application_id = ${q(demo.application_id)}`,
    `app_client_secret = ${q(demo.client_secret)}`,
    "continue_on_failure = false",
    "",
    "[[credentials]]",
    'env = "DEMO_API_TOKEN"',
    `resource = ${q(demo.resource)}`,
    "",
    "[mcp_governance]",
    'mode = "block"',
    ""
  ].join("\n")
  writeFileSync(file, text, { mode: 0o600 })
  return file
}

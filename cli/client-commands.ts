// The client commands (run, the api's admin kinds, agents, delegations, config) as
// effect/cli commands. Each handler is a plain async function from admin.ts, agents.ts
// or run.ts; failures become CLI errors carrying their exit code (cli/exit.ts).
import { Effect, Option, Runtime } from "effect"
import { Argument, CliError, Command, Flag } from "effect/cli"
import { CaracalError } from "../sdk/src/errors.ts"
import { action, type AdminContext, archiveRecord, bodyOf, createRecord, getRecord, KINDS, type Kind, listRecords, printRecord, updateRecord } from "./admin.ts"
import {
  agentsAction,
  type AgentsContext,
  agentsGet,
  agentsList,
  agentsTree,
  delegationsGet,
  delegationsList,
  delegationsRevoke,
  delegationsTraverse
} from "./agents.ts"
import { ClientConfigError, clientVariables, discoverConfig, loadClientEnv, writeDemoConfig } from "./client-config.ts"
import { EXIT } from "./exit.ts"
import { type Out, UsageError } from "./output.ts"
import { endLikeChild, RunRefused, runGoverned } from "./run.ts"

const out: Out = (line) => void process.stdout.write(`${line}\n`)
const err: Out = (line) => void process.stderr.write(`${line}\n`)

/** The exit code a failure means (README: "Exit codes"). */
export const exitCodeOf = (e: unknown): number => {
  if (e instanceof ClientConfigError) return EXIT.config
  if (e instanceof RunRefused) return e.exitCode
  if (e instanceof CaracalError) {
    if (e.code === "invalid_config") return EXIT.config
    if (e.code === "unreachable") return EXIT.unreachable
    if (e.status === 401 || e.status === 403) return EXIT.denied
  }
  return EXIT.failed
}

export const clientMessageOf = (e: unknown): string => {
  if (e instanceof CaracalError) return `${e.service}: ${e.code}${e.reason ? ` (${e.reason})` : ""}: ${e.description}`
  return e instanceof Error ? e.message : String(e)
}

/** A failure as effect/cli reports it (its message on stderr), exiting with its code. */
const failure = (e: unknown) => {
  const u = new CliError.UserError({ cause: e, userMessage: clientMessageOf(e) })
  ;(u as any)[Runtime.errorExitCode] = exitCodeOf(e)
  return u
}

const attempt = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: failure })

const json = Flag.Boolean("json").pipe(Flag.withDefault(false), Flag.withDescription("JSON output (one object per line)"))
const opt = (name: string, description: string) =>
  Flag.String(name).pipe(Flag.optional, Flag.map(Option.getOrUndefined), Flag.withDescription(description))
const zone = opt("zone", "zone id (default CARACAL_ZONE_ID, else caracal.toml zone_id)")
const id = (what: string) => Argument.String("id").pipe(Argument.withDescription(what))
const reason = opt("reason", "why (kept in the log)")

const adminContext = (o: { json: boolean; zone?: string | undefined }): AdminContext => {
  const env = loadClientEnv()
  return { env, out, json: o.json, zone: o.zone ?? env.zoneId }
}

// ------------------------------------------------------------------ admin kinds

const sets = Flag.String("set").pipe(Flag.atLeast(0), Flag.withDescription("field=value (JSON when it parses; @file reads a file; repeatable)"))
const data = opt("data", "the whole JSON body, or @file")

const kindCommand = (kind: Kind) => {
  // zones take no --zone (their id is the argument); it is accepted and unused there
  const zoneFlag = { zone }
  const list = Command.make("list", {
    ...zoneFlag,
    json,
    limit: Flag.Int("limit").pipe(Flag.withDefault(50), Flag.withDescription("page size, 1-1000")),
    status: opt("status", "active or archived"),
    all: Flag.Boolean("all").pipe(Flag.withDefault(false), Flag.withDescription("follow every page"))
  }, (o) => attempt(() => listRecords(adminContext(o), kind, o))).pipe(Command.withDescription(`list ${kind.name}`))
  const get = Command.make("get", { ...zoneFlag, json, id: id(`the ${kind.singular}'s id`) }, (o) =>
    attempt(() => getRecord(adminContext(o), kind, o.id))).pipe(Command.withDescription(`show one ${kind.singular}`))
  const create = Command.make("create", { ...zoneFlag, json, sets, data }, (o) =>
    attempt(() => createRecord(adminContext(o), kind, bodyOf(o.sets, o.data)))).pipe(Command.withDescription(`create a ${kind.singular}`))
  const update = Command.make("update", { ...zoneFlag, json, id: id(`the ${kind.singular}'s id`), sets, data }, (o) =>
    attempt(() => updateRecord(adminContext(o), kind, o.id, bodyOf(o.sets, o.data)))).pipe(
      Command.withDescription(`change a ${kind.singular} (sent with its current ETag)`)
    )
  const archive = Command.make(kind.endVerb, { ...zoneFlag, json, id: id(`the ${kind.singular}'s id`), reason }, (o) =>
    attempt(() => archiveRecord(adminContext(o), kind, o.id, o.reason))).pipe(
      Command.withDescription(`${kind.endVerb} a ${kind.singular} (its history stays in the log)`)
    )
  const extra = extras(kind)
  return Command.make(kind.name).pipe(
    Command.withDescription(`${kind.name} (api, CARACAL_ADMIN_TOKEN)`),
    Command.withSubcommands([list, get, create, update, archive, ...extra])
  )
}

/** The api's routes beyond create/read/update/archive. */
const extras = (kind: Kind) => {
  const post = (name: string, description: string, suffix: string, body: (o: any) => Record<string, unknown>, flags: Record<string, any> = {}) =>
    Command.make(name, { zone, json, id: id(`the ${kind.singular}'s id`), ...flags }, (o: any) =>
      attempt(() => action(adminContext(o), kind, o.id, suffix, body(o)))).pipe(Command.withDescription(description))
  switch (kind.name) {
    case "zones":
      return [post("rotate-key", "rotate the zone's signing key", "keys/rotate", () => ({}))]
    case "applications":
      return [post("rotate-secret", "a new client secret (shown once); the old one verifies for --overlap seconds", "secret", (o) =>
        o.overlap === undefined ? {} : { overlap_seconds: o.overlap }, {
        overlap: Flag.Int("overlap").pipe(Flag.optional, Flag.map(Option.getOrUndefined), Flag.withDescription("seconds the previous secret keeps verifying"))
      })]
    case "policies":
      return [post("add-version", "a new Rego version (checked by OPA)", "versions", (o) => bodyOf([`rego=@${o.rego}`], undefined), {
        rego: Flag.String("rego").pipe(Flag.withDescription("file holding the Rego module"))
      })]
    case "policy-sets":
      return [
        post("add-version", "a new version listing its policies", "versions", (o) => ({ manifest: { policies: o.policy.map((p: string) => ({ policy_id: p })) } }), {
          policy: Flag.String("policy").pipe(Flag.atLeast(1), Flag.withDescription("policy id (repeatable)"))
        }),
        post("activate", "make a version the zone's active policy", "activate", (o) => ({ version_id: o.version }), {
          version: Flag.String("version").pipe(Flag.withDescription("the version id"))
        })
      ]
    default:
      return []
  }
}

export const adminCommands = KINDS.map(kindCommand)

// ------------------------------------------------------------------ agents, delegations

const agentsContext = (o: { json: boolean; zone?: string | undefined }): AgentsContext => {
  const env = loadClientEnv()
  return { env, out, json: o.json, zone: o.zone ?? env.zoneId }
}

const agentsCommand = Command.make("agents").pipe(
  Command.withDescription("agent sessions (coordinator, CARACAL_COORDINATOR_TOKEN)"),
  Command.withSubcommands([
    Command.make("list", {
      zone,
      json,
      application: opt("application", "only this application's sessions"),
      status: opt("status", "active, suspended, terminated"),
      limit: Flag.Int("limit").pipe(Flag.withDefault(50), Flag.withDescription("page size, 1-500")),
      all: Flag.Boolean("all").pipe(Flag.withDefault(false), Flag.withDescription("follow every page"))
    }, (o) => attempt(() => agentsList(agentsContext(o), o))).pipe(Command.withDescription("sessions, newest first")),
    Command.make("get", { zone, json, id: id("the session id") }, (o) => attempt(() => agentsGet(agentsContext(o), o.id))).pipe(
      Command.withDescription("one session")
    ),
    Command.make("tree", { zone, json, id: id("the root of the subtree") }, (o) => attempt(() => agentsTree(agentsContext(o), o.id))).pipe(
      Command.withDescription("a session and its descendants, drawn as a tree")
    ),
    Command.make("suspend", { zone, json, id: id("the session id") }, (o) => attempt(() => agentsAction(agentsContext(o), "suspend", o.id))).pipe(
      Command.withDescription("suspend a session and its subtree")
    ),
    Command.make("resume", { zone, json, id: id("the session id") }, (o) => attempt(() => agentsAction(agentsContext(o), "resume", o.id))).pipe(
      Command.withDescription("resume a session and what its suspension paused")
    ),
    Command.make("terminate", { zone, json, id: id("the session id"), reason }, (o) =>
      attempt(() => agentsAction(agentsContext(o), "terminate", o.id, o.reason))).pipe(
        Command.withDescription("end a session and its subtree (its mandates stop working)")
      )
  ])
)

const delegationsCommand = Command.make("delegations").pipe(
  Command.withDescription("delegation edges (coordinator, CARACAL_COORDINATOR_TOKEN)"),
  Command.withSubcommands([
    Command.make("list", {
      zone,
      json,
      agent: Flag.String("agent").pipe(Flag.withDescription("the session whose edges to list")),
      direction: opt("direction", "inbound or outbound (default both)")
    }, (o) => attempt(() => delegationsList(agentsContext(o), o.agent, o.direction))).pipe(Command.withDescription("edges into and out of a session")),
    Command.make("get", { zone, json, id: id("the edge id") }, (o) => attempt(() => delegationsGet(agentsContext(o), o.id))).pipe(
      Command.withDescription("one edge")
    ),
    Command.make("traverse", { zone, json, id: id("the edge id") }, (o) => attempt(() => delegationsTraverse(agentsContext(o), o.id))).pipe(
      Command.withDescription("the edge and every edge downstream, drawn as a tree")
    ),
    Command.make("revoke", { zone, json, id: id("the edge id"), reason }, (o) => attempt(() => delegationsRevoke(agentsContext(o), o.id, o.reason))).pipe(
      Command.withDescription("revoke the edge and everything downstream")
    )
  ])
)

// ------------------------------------------------------------------ run

const runCommand = Command.make("run", {
  mcp: opt("mcp", "the command is the MCP tool server NAME: the sts must grant resource mcp:NAME before it launches"),
  json,
  command: Argument.String("command").pipe(Argument.atLeast(1), Argument.withDescription("the command and its arguments, after --"))
}, (o) =>
  // uninterruptible: a Ctrl-C is forwarded to the child, and caracal ends when the child has
  Effect.uninterruptible(attempt(async () => {
    const env = loadClientEnv()
    if (env.toml === undefined) {
      throw new ClientConfigError("caracal run needs a caracal.toml (CARACAL_CONFIG, ./caracal.toml or $XDG_CONFIG_HOME/caracal/caracal.toml)")
    }
    const outcome = await runGoverned({ toml: env.toml, stsUrl: env.stsUrl, command: o.command, mcp: o.mcp, json: o.json, say: err, env: process.env })
    return endLikeChild(outcome)
  }))).pipe(Command.withDescription("run a command with mandates injected per caracal.toml's [[credentials]]; exit code and signals pass through"))

// ------------------------------------------------------------------ config

const configCommand = Command.make("config").pipe(
  Command.withDescription("the client configuration in use"),
  Command.withSubcommands([
    Command.make("show", { json }, (o) =>
      attempt(async () => {
        const file = discoverConfig()
        const env = loadClientEnv()
        const t = env.toml
        const shown = {
          config_file: file ?? null,
          api_url: env.apiUrl,
          coordinator_url: env.coordinatorUrl,
          sts_url: env.stsUrl ?? null,
          zone_id: env.zoneId ?? null,
          admin_token: env.adminToken === undefined ? "not set" : "set",
          coordinator_token: env.coordinatorToken === undefined ? "not set" : "set",
          data_dir: env.dataDir,
          ...(t === undefined ? {} : {
            application_id: t.applicationId,
            app_client_secret: "set",
            continue_on_failure: t.continueOnFailure,
            credentials: t.credentials.map((c) => `${c.env}=${c.resource}`).join(", ") || "-",
            optional_credentials: t.optionalCredentials.map((c) => `${c.env}=${c.resource} (${c.onFailure})`).join(", ") || "-",
            mcp_governance: t.mcpMode
          })
        }
        printRecord(out, o.json, shown)
      })).pipe(Command.withDescription("where each setting comes from (secrets shown as set / not set)")),
    Command.make("init", {
      demo: Flag.Boolean("demo").pipe(Flag.withDefault(false), Flag.withDescription("for the demo zone npm start made ($XDG_DATA_HOME/caracal/demo.json)")),
      force: Flag.Boolean("force").pipe(Flag.withDefault(false), Flag.withDescription("replace an existing caracal.toml")),
      json
    }, (o) =>
      attempt(async () => {
        if (!o.demo) throw new UsageError("only --demo is supported: write caracal.toml by hand for your own zone (README: caracal.toml)")
        const env = loadClientEnv({ ...process.env, CARACAL_CONFIG: undefined }, process.cwd(), { skipToml: true })
        const file = writeDemoConfig(env, process.cwd(), o.force)
        out(o.json ? JSON.stringify({ written: file }) : `wrote ${file} (the demo application's secret is in it: mode 0600)`)
      })).pipe(Command.withDescription("write ./caracal.toml for the demo zone (its secret stays out of the output)")),
    Command.make("variables", { json }, (o) =>
      attempt(async () => {
        for (const v of clientVariables) {
          out(o.json ? JSON.stringify(v) : `${v.name.padEnd(26)}${(v.default ?? "-").padEnd(24)}${v.doc}`)
        }
      })).pipe(Command.withDescription("the CARACAL_* variables and their defaults"))
  ])
)

export const clientCommands = [runCommand, ...adminCommands, agentsCommand, delegationsCommand, configCommand]

export { UsageError }

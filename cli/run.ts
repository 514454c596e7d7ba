// `caracal run [--mcp NAME] -- <command>`: mandates instead of credentials for a child
// process. The application's ambient mandate (client_credentials with caracal.toml's
// secret) is exchanged at the sts — through zone_url's /oauth/2/token pass-through, or
// CARACAL_STS_URL directly — for one per-call mandate per [[credentials]] entry, injected
// under its `env`. With --mcp NAME the command is an MCP tool server: the resource
// `mcp:NAME` is asked for before the launch, so the sts decides and audits it; in `block`
// mode a refusal means no launch, in `log` mode the server runs and the sts's audited
// denial is the record. The child's exit code and signals pass through.
import { spawn } from "node:child_process"
import { constants } from "node:os"
import { CaracalError } from "../sdk/src/errors.ts"
import { call } from "../sdk/src/http.ts"
import { exchange } from "../sdk/src/token.ts"
import type { CaracalToml, CredentialEntry } from "./client-config.ts"
import { EXIT } from "./exit.ts"

export interface RunOptions {
  readonly toml: CaracalToml
  readonly stsUrl: string | undefined
  readonly command: ReadonlyArray<string>
  readonly mcp: string | undefined
  readonly json: boolean
  /** Where caracal's own messages go (stderr: stdout belongs to the child). */
  readonly say: (line: string) => void
  readonly env: Record<string, string | undefined>
}

export type RunOutcome = { readonly code: number } | { readonly signal: NodeJS.Signals }

/** A refusal or failure that stops the launch, with the exit code it maps to. */
export class RunRefused extends Error {
  readonly _tag = "RunRefused"
  readonly exitCode: number
  constructor(message: string, exitCode: number) {
    super(message)
    this.exitCode = exitCode
  }
}

const describe = (e: unknown) =>
  e instanceof CaracalError ? `${e.code}${e.reason ? ` (${e.reason})` : ""}: ${e.description}` : e instanceof Error ? e.message : String(e)

// whatever the sts answered (access_denied, invalid_target, invalid_client…) it refused the
// mandate: one code for "not authorised to run this", apart from the sts not answering
const exitCodeOf = (e: unknown) =>
  e instanceof CaracalError ? (e.code === "unreachable" ? EXIT.unreachable : EXIT.denied) : EXIT.failed

const FORWARDED: ReadonlyArray<NodeJS.Signals> = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"]

export const tokenUrlOf = (toml: CaracalToml, stsUrl: string | undefined) => `${stsUrl ?? toml.zoneUrl}/oauth/2/token`

/** Resolves the mandates, then launches; resolves with the child's exit code or signal. */
export const runGoverned = async (o: RunOptions): Promise<RunOutcome> => {
  const { toml } = o
  const tokenUrl = tokenUrlOf(toml, o.stsUrl)
  const note = (level: "info" | "warn" | "error", message: string, fields: Record<string, unknown> = {}) =>
    o.say(o.json ? JSON.stringify({ level, message, ...fields }) : `caracal: ${level === "info" ? "" : `${level}: `}${message}`)

  // the ambient mandate authenticates the application once; each entry is then exchanged with it
  const ambient = await call<{ access_token: string }>({
    service: "sts",
    method: "POST",
    url: tokenUrl,
    form: new URLSearchParams({ grant_type: "client_credentials", zone_id: toml.zoneId, application_id: toml.applicationId, client_secret: toml.appClientSecret }),
    idempotent: false
  }).then((r) => r.body.access_token, (e: unknown) => e as Error)

  const perCall = (resource: string) =>
    ambient instanceof Error
      ? Promise.reject(ambient)
      : exchange({ tokenUrl, subjectToken: ambient, zoneId: toml.zoneId, resource })

  // MCP governance first: in block mode nothing else happens for a server the sts refuses
  if (o.mcp !== undefined) {
    const resource = `mcp:${o.mcp}`
    const granted = await perCall(resource).then(() => undefined, (e: unknown) => e)
    if (granted !== undefined) {
      if (toml.mcpMode === "block") {
        note("error", `MCP server ${o.mcp} not launched: ${describe(granted)}`, { resource, mode: "block" })
        throw new RunRefused(`MCP server ${o.mcp} refused`, exitCodeOf(granted))
      }
      note("warn", `MCP server ${o.mcp} refused (${describe(granted)}); launching anyway (mcp_governance.mode = "log"), the sts recorded the denial`, { resource, mode: "log" })
    }
  }

  const injected: Record<string, string> = {}
  const entries: ReadonlyArray<CredentialEntry & { onFailure?: "warn" | "error" }> = [...toml.credentials, ...toml.optionalCredentials]
  for (const entry of entries) {
    try {
      injected[entry.env] = (await perCall(entry.resource)).accessToken
    } catch (e) {
      const fields = { env: entry.env, resource: entry.resource }
      if (entry.onFailure === "warn") {
        note("warn", `optional credential ${entry.env} (${entry.resource}) not issued: ${describe(e)}`, fields)
        continue
      }
      if (toml.continueOnFailure) {
        note("warn", `credential ${entry.env} (${entry.resource}) not issued: ${describe(e)}; continuing (continue_on_failure)`, fields)
        continue
      }
      note("error", `credential ${entry.env} (${entry.resource}) not issued: ${describe(e)}`, fields)
      throw new RunRefused(`credential ${entry.env} refused`, exitCodeOf(e))
    }
  }

  return launch(o.command, { ...o.env, ...injected }, (m) => note("error", m))
}

const launch = (command: ReadonlyArray<string>, env: Record<string, string | undefined>, error: (m: string) => void) =>
  new Promise<RunOutcome>((resolve) => {
    const child = spawn(command[0]!, command.slice(1), { stdio: "inherit", env })
    // a signal sent to caracal is meant for the work: it goes to the child, and caracal
    // ends when the child does, the way the child ended
    const forward = (s: NodeJS.Signals) => () => void child.kill(s)
    const handlers = FORWARDED.map((s) => [s, forward(s)] as const)
    for (const [s, h] of handlers) process.on(s, h)
    const done = (o: RunOutcome) => {
      for (const [s, h] of handlers) process.off(s, h)
      resolve(o)
    }
    child.once("error", (e: NodeJS.ErrnoException) => {
      error(`cannot run ${command[0]}: ${e.code === "ENOENT" ? "command not found" : e.code ?? e.message}`)
      done({ code: e.code === "ENOENT" ? EXIT.notFound : EXIT.notExecutable })
    })
    child.once("exit", (code, signal) => done(signal !== null ? { signal } : { code: code ?? EXIT.failed }))
  })

/** Ends this process the way the child ended: the same code, or death by the same signal. */
export const endLikeChild = (o: RunOutcome): never => {
  if ("code" in o) process.exit(o.code)
  // the runtime's own handlers would turn the signal into an interruption: remove them
  process.removeAllListeners(o.signal)
  process.kill(process.pid, o.signal)
  // a signal whose default action does not end the process: the shell's convention
  process.exit(128 + (constants.signals[o.signal] ?? 0))
}

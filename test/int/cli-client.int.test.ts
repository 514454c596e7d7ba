// The caracal command as an operator runs it (the bin, a real process) against the real
// sts, api and coordinator: `caracal run` injecting mandates, optional credentials,
// continue_on_failure, MCP governance in block and log mode, exit codes and signals
// passing through; the admin kinds; agents and delegations with their trees; --json.
import { spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, existsSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { nodeBinary } from "../../core/testing/index.ts"
import { repoRoot } from "../../core/stack-env.ts"
import { Caracal, CoordinatorClient } from "../../sdk/src/index.ts"
import { until } from "../fixtures/harness.ts"
import { startZone, type ZoneHarness } from "../fixtures/zone.ts"

let z: ZoneHarness
let dir: string
let ambient: string

interface Ran {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/** The `caracal` bin in a working directory of the test's, with only the variables given (and PATH, HOME). */
const caracal = (args: ReadonlyArray<string>, env: Record<string, string> = {}, opts: { cwd?: string; onStdout?: (s: string, kill: (s: NodeJS.Signals) => void) => void } = {}) =>
  new Promise<Ran>((resolve) => {
    const child = spawn(nodeBinary(), [path.join(repoRoot, "cli/caracal.mjs"), ...args], {
      cwd: opts.cwd ?? dir,
      env: { PATH: process.env.PATH ?? "", HOME: dir, XDG_CONFIG_HOME: path.join(dir, "xdg"), ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000)
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString()
      opts.onStdout?.(stdout, (s) => child.kill(s))
    })
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()))
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })

const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as Record<string, any>

const toml = (extra: string, over: Record<string, string> = {}) => {
  const f = { zone_url: z.h.url, zone_id: z.zoneId, application_id: z.app.id, app_client_secret: z.app.secret, ...over }
  return `${Object.entries(f).map(([k, v]) => `${k} = "${v}"`).join("\n")}\n${extra}`
}

const writeConfig = (name: string, text: string) => {
  const file = path.join(dir, name)
  writeFileSync(file, text)
  return file
}

/** A child that prints the listed variables (a mandate's claims, or "absent") as JSON. */
const printEnv = (...names: Array<string>) => [
  nodeBinary(), "-e",
  `const o={};for(const n of ${JSON.stringify(names)}){const v=process.env[n];o[n]=v?JSON.parse(Buffer.from(v.split('.')[1],'base64url')):'absent'};console.log(JSON.stringify(o))`
]

const auditDenials = async (resource: string) =>
  (await z.h.redis.xrange(z.h.keys.stream("audit"), "-", "+"))
    .map(([, f]) => JSON.parse(f[f.indexOf("e") + 1]!) as Record<string, any>)
    .filter((r) => r.decision === "deny" && JSON.stringify(r.resource ?? "").includes(resource))

beforeAll(async () => {
  z = await startZone("cli_client", { resources: ["api", "reports", "denied", "mcp:github", "mcp:denied"] })
  dir = mkdtempSync(path.join(os.tmpdir(), "caracal-cli-"))
  ambient = await z.ambient()
}, 180_000)
afterAll(async () => {
  await z?.close()
})

describe("caracal run", () => {
  it("injects one per-call mandate per [[credentials]] entry under its env (through zone_url's pass-through)", async () => {
    const file = writeConfig("run.toml", toml(`
[[credentials]]
env = "API_TOKEN"
resource = "api"

[[credentials]]
env = "REPORTS_TOKEN"
resource = "reports"
`))
    const r = await caracal(["run", "--", ...printEnv("API_TOKEN", "REPORTS_TOKEN")], { CARACAL_CONFIG: file })
    expect(r.code, r.stderr).toBe(0)
    const seen = JSON.parse(r.stdout)
    expect(seen.API_TOKEN).toMatchObject({ use: "per_call", aud: "api", client_id: z.app.id, zone_id: z.zoneId })
    expect(seen.REPORTS_TOKEN).toMatchObject({ use: "per_call", aud: "reports" })
    expect(r.stderr).toBe("")
  })

  it("CARACAL_STS_URL goes to the sts directly; ./caracal.toml is found in the working directory", async () => {
    const cwd = path.join(dir, "project")
    mkdirSync(cwd, { recursive: true })
    writeFileSync(path.join(cwd, "caracal.toml"), toml(`[[credentials]]\nenv = "API_TOKEN"\nresource = "api"\n`, { zone_url: "http://127.0.0.1:1" }))
    const r = await caracal(["run", "--", ...printEnv("API_TOKEN")], { CARACAL_STS_URL: z.h.sts.url }, { cwd })
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).API_TOKEN.aud).toBe("api")
    // without it, the unreachable zone_url is the answer: exit 3, nothing run
    const down = await caracal(["run", "--", ...printEnv("API_TOKEN")], {}, { cwd })
    expect(down.code).toBe(3)
    expect(down.stdout).toBe("")
    expect(down.stderr).toContain("unreachable")
  })

  it("optional credentials: warn runs without the variable; error stops the launch (exit 4)", async () => {
    const warn = writeConfig("warn.toml", toml(`
[[credentials]]
env = "API_TOKEN"
resource = "api"

[[optional_credentials]]
env = "DENIED_TOKEN"
resource = "denied"
on_failure = "warn"
`))
    const r = await caracal(["run", "--", ...printEnv("API_TOKEN", "DENIED_TOKEN")], { CARACAL_CONFIG: warn })
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toMatchObject({ API_TOKEN: { aud: "api" }, DENIED_TOKEN: "absent" })
    expect(r.stderr).toMatch(/warn: optional credential DENIED_TOKEN \(denied\) not issued: access_denied \(denied_by_test_policy\)/)
    const error = writeConfig("error.toml", toml(`[[optional_credentials]]\nenv = "DENIED_TOKEN"\nresource = "denied"\non_failure = "error"\n`))
    const e = await caracal(["run", "--", ...printEnv("DENIED_TOKEN")], { CARACAL_CONFIG: error })
    expect(e.code).toBe(4)
    expect(e.stdout).toBe("")
    expect(e.stderr).toContain("credential DENIED_TOKEN (denied) not issued")
  })

  it("a refused credential stops the launch unless continue_on_failure; --json messages", async () => {
    const body = `[[credentials]]\nenv = "DENIED_TOKEN"\nresource = "denied"\n[[credentials]]\nenv = "API_TOKEN"\nresource = "api"\n`
    const stop = await caracal(["run", "--", ...printEnv("API_TOKEN")], { CARACAL_CONFIG: writeConfig("stop.toml", toml(body)) })
    expect(stop.code).toBe(4)
    expect(stop.stdout).toBe("")
    const go = await caracal(["run", "--json", "--", ...printEnv("API_TOKEN", "DENIED_TOKEN")], {
      CARACAL_CONFIG: writeConfig("go.toml", toml(`continue_on_failure = true\n${body}`))
    })
    expect(go.code, go.stderr).toBe(0)
    expect(JSON.parse(go.stdout)).toMatchObject({ API_TOKEN: { aud: "api" }, DENIED_TOKEN: "absent" })
    const line = JSON.parse(go.stderr.trim().split("\n")[0]!)
    expect(line).toMatchObject({ level: "warn", env: "DENIED_TOKEN", resource: "denied" })
  })

  it("MCP governance, block: a server the sts refuses is not launched; an allowed one is", async () => {
    const file = writeConfig("mcp-block.toml", toml(`[mcp_governance]\nmode = "block"\n`))
    const marker = path.join(dir, "mcp-launched")
    const server = [nodeBinary(), "-e", `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`]
    const refused = await caracal(["run", "--mcp", "denied", "--", ...server], { CARACAL_CONFIG: file })
    expect(refused.code).toBe(4)
    expect(refused.stderr).toMatch(/MCP server denied not launched: access_denied \(denied_by_test_policy\)/)
    expect(existsSync(marker)).toBe(false)
    await until(async () => (await auditDenials("mcp:denied")).length > 0, 30_000, "the sts's audited denial")
    const allowed = await caracal(["run", "--mcp", "github", "--", ...server], { CARACAL_CONFIG: file })
    expect(allowed.code, allowed.stderr).toBe(0)
    expect(existsSync(marker)).toBe(true)
    // block is the default when [mcp_governance] is absent (fail closed)
    const unset = await caracal(["run", "--mcp", "denied", "--", "true"], { CARACAL_CONFIG: writeConfig("mcp-default.toml", toml("")) })
    expect(unset.code).toBe(4)
  })

  it("MCP governance, log: the refused server runs, and the sts's audit stream holds the denial", async () => {
    const before = (await auditDenials("mcp:denied")).length
    const r = await caracal(["run", "--mcp", "denied", "--", nodeBinary(), "-e", "console.log('serving')"], {
      CARACAL_CONFIG: writeConfig("mcp-log.toml", toml(`[mcp_governance]\nmode = "log"\n`))
    })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toBe("serving\n")
    expect(r.stderr).toContain('launching anyway (mcp_governance.mode = "log")')
    await until(async () => (await auditDenials("mcp:denied")).length > before, 30_000, "a new audited denial")
  })

  it("the child's exit code and signals pass through; a missing command is 127", async () => {
    const file = writeConfig("plain.toml", toml(""))
    expect((await caracal(["run", "--", nodeBinary(), "-e", "process.exit(7)"], { CARACAL_CONFIG: file })).code).toBe(7)
    const killed = await caracal(["run", "--", nodeBinary(), "-e", "process.kill(process.pid, 'SIGKILL')"], { CARACAL_CONFIG: file })
    expect(killed.signal).toBe("SIGKILL")
    // a SIGTERM sent to caracal reaches the child, and caracal ends as the child does
    const forwarded = await caracal(["run", "--", nodeBinary(), "-e",
      "process.on('SIGTERM', () => { console.log('got TERM'); process.exit(42) }); setInterval(() => {}, 1000); console.log('ready')"],
      { CARACAL_CONFIG: file },
      { onStdout: (s, kill) => s === "ready\n" && kill("SIGTERM") })
    expect(forwarded.stdout).toBe("ready\ngot TERM\n")
    expect(forwarded.code).toBe(42)
    const missing = await caracal(["run", "--", "no-such-command-caracal"], { CARACAL_CONFIG: file })
    expect(missing.code).toBe(127)
    expect(missing.stderr).toContain("command not found")
  })

  it("without a caracal.toml, or with a bad one, nothing runs (exit 2, file and line named)", async () => {
    const none = await caracal(["run", "--", "true"])
    expect(none.code).toBe(2)
    expect(none.stderr).toContain("caracal run needs a caracal.toml")
    const bad = writeConfig("bad.toml", toml(`[[credentials]]\nenv = "A"\n\n[[credentials]]\nenv = "B"\nresource = 7\n`))
    const r = await caracal(["run", "--", "true"], { CARACAL_CONFIG: bad })
    expect(r.code).toBe(2)
    expect(r.stderr).toContain(`${bad}:5: credentials[0].resource: is required`)
  })
})

describe("admin commands", () => {
  const admin = () => ({ CARACAL_API_URL: z.h.url, CARACAL_ADMIN_TOKEN: z.h.adminToken })

  it("list, get, create, update, archive with aligned tables and --json", async () => {
    const zones = await caracal(["zones", "list", "--json"], admin())
    expect(zones.code, zones.stderr).toBe(0)
    expect(zones.stdout.trim().split("\n").map((l) => JSON.parse(l).id)).toContain(z.zoneId)

    const created = await caracal(["applications", "create", "--zone", z.zoneId, "--set", "name=reporter", "--set", "allowed_scopes=agent:lifecycle"], admin())
    expect(created.code, created.stderr).toBe(0)
    expect(created.stdout).toMatch(/^client_secret\s+cs_/m)
    expect(created.stdout).toContain("the client secret is shown once")
    const appId = /^id\s+(\S+)$/m.exec(created.stdout)![1]!

    const table = await caracal(["applications", "list"], { ...admin(), CARACAL_ZONE_ID: z.zoneId })
    expect(table.code, table.stderr).toBe(0)
    const lines = table.stdout.trim().split("\n")
    expect(lines[0]).toMatch(/^ID\s+NAME\s+STATUS\s+ALLOWED_SCOPES\s+CREATED_AT$/)
    const nameColumn = lines[0]!.indexOf("NAME")
    for (const l of lines.slice(1)) expect(l.slice(nameColumn - 2, nameColumn)).toBe("  ")
    expect(table.stdout).toContain("reporter")
    expect(table.stdout).not.toContain("cs_")

    const updated = await caracal(["applications", "update", appId, "--zone", z.zoneId, "--set", "name=reporter-2", "--json"], admin())
    expect(updated.code, updated.stderr).toBe(0)
    expect(JSON.parse(updated.stdout)).toMatchObject({ id: appId, name: "reporter-2", version: 2 })

    const archived = await caracal(["applications", "archive", appId, "--zone", z.zoneId, "--reason", "done"], admin())
    expect(archived.stdout.trim()).toBe(`application ${appId}: archived`)
    const got = await caracal(["applications", "get", appId, "--zone", z.zoneId, "--json"], admin())
    expect(JSON.parse(got.stdout)).toMatchObject({ status: "archived", archive_reason: "done" })
  })

  it("resources, bindings, policies and policy sets (versions, activation) through the sub-commands", async () => {
    const env = { ...admin(), CARACAL_ZONE_ID: z.zoneId }
    const res = JSON.parse((await caracal(["resources", "create", "--set", "identifier=files", "--set", "scopes=read,write", "--json"], env)).stdout)
    expect(res).toMatchObject({ identifier: "files", scopes: ["read", "write"] })
    const bind = await caracal(["bindings", "create", "--set", `resource_id=${res.id}`, "--set", `application_id=${z.app.id}`, "--json"], env)
    expect(bind.code, bind.stderr).toBe(0)
    const again = await caracal(["bindings", "create", "--set", `resource_id=${res.id}`, "--set", `application_id=${z.app.id}`], env)
    expect(again.code).toBe(1)
    expect(again.stderr).toContain("api: binding_exists")
    const rego = path.join(dir, "p.rego")
    writeFileSync(rego, `package caracal.authz\n\ndefault result := {"allow": true, "reason": "second"}\n`)
    const policy = JSON.parse((await caracal(["policies", "create", "--set", "name=second", "--set", `rego=@${rego}`, "--json"], env)).stdout)
    const bad = path.join(dir, "bad.rego")
    writeFileSync(bad, "package caracal.authz\nresult := {\n")
    const refused = await caracal(["policies", "add-version", policy.id, "--rego", bad], env)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain("invalid_policy")
    const set = JSON.parse((await caracal(["policy-sets", "create", "--set", "name=second-set", "--json"], env)).stdout)
    const version = await caracal(["policy-sets", "add-version", set.id, "--policy", policy.id, "--json"], env)
    expect(version.code, version.stderr).toBe(0)
    const versionId = JSON.parse(version.stdout).versions[0].id
    const activated = await caracal(["policy-sets", "activate", set.id, "--version", versionId, "--json"], env)
    expect(activated.code, activated.stderr).toBe(0)
  })

  it("a wrong admin token is exit 4, a missing one or a missing zone a clear message, never a stack trace", async () => {
    const wrong = await caracal(["zones", "list"], { ...admin(), CARACAL_ADMIN_TOKEN: "wrong" })
    expect(wrong.code).toBe(4)
    expect(wrong.stderr).toContain("invalid_admin_token")
    const none = await caracal(["zones", "list"], { CARACAL_API_URL: z.h.url })
    expect(none.code).toBe(2)
    expect(none.stderr).toContain("CARACAL_ADMIN_TOKEN is not set")
    const noZone = await caracal(["resources", "list"], admin())
    expect(noZone.code).toBe(1)
    expect(noZone.stderr).toContain("pass --zone")
    for (const r of [wrong, none, noZone]) expect(r.stderr).not.toMatch(/\n\s+at /)
  })

  it("CARACAL_ENV_FILE supplies variables (the environment's own win); a bad line names file and line", async () => {
    const envFile = path.join(dir, "admin.env")
    writeFileSync(envFile, `# admin\nCARACAL_API_URL=${z.h.url}\nexport CARACAL_ADMIN_TOKEN="${z.h.adminToken}"\n`)
    const r = await caracal(["zones", "get", z.zoneId, "--json"], { CARACAL_ENV_FILE: envFile })
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).id).toBe(z.zoneId)
    const overridden = await caracal(["zones", "get", z.zoneId], { CARACAL_ENV_FILE: envFile, CARACAL_ADMIN_TOKEN: "wrong" })
    expect(overridden.code).toBe(4)
    writeFileSync(envFile, "CARACAL_API_URL=x\nnot a line\n")
    const bad = await caracal(["zones", "list"], { CARACAL_ENV_FILE: envFile })
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain(`${envFile}:2: expected KEY=VALUE`)
  })
})

describe("agents and delegations", () => {
  it("list, tree (drawn), suspend, resume, terminate; delegations list, traverse (drawn), revoke", async () => {
    const sdk = new Caracal({ coordinator: new CoordinatorClient({ baseUrl: z.coordinator.url }), zoneId: z.zoneId, applicationId: z.app.id, subjectToken: ambient, stsUrl: z.h.sts.url })
    const root = await sdk.startSession({ metadata: { cli: true } })
    const a = await sdk.startSession({ parent: root })
    const b = await sdk.startSession({ parent: root })
    const a1 = await sdk.startSession({ parent: a })
    const env = { CARACAL_COORDINATOR_URL: z.coordinator.url, CARACAL_COORDINATOR_TOKEN: ambient, CARACAL_ZONE_ID: z.zoneId }

    const list = await caracal(["agents", "list", "--json"], env)
    expect(list.code, list.stderr).toBe(0)
    expect(list.stdout.trim().split("\n").map((l) => JSON.parse(l).id)).toEqual(expect.arrayContaining([root.id, a.id, b.id, a1.id]))
    // pages of 2, followed to the end; newest first
    const paged = await caracal(["agents", "list", "--limit", "2", "--all", "--json"], env)
    const pagedIds = paged.stdout.trim().split("\n").map((l) => JSON.parse(l).id)
    expect(pagedIds.slice(0, 4)).toEqual([a1.id, b.id, a.id, root.id])
    const one = await caracal(["agents", "list", "--limit", "2"], env)
    expect(one.stdout.trim().split("\n")).toHaveLength(4)
    expect(one.stdout).toContain("(more: --all)")

    const tree = await caracal(["agents", "tree", root.id], env)
    expect(tree.code, tree.stderr).toBe(0)
    const lines = tree.stdout.trimEnd().split("\n")
    expect(lines).toHaveLength(4)
    expect(lines[0]).toMatch(new RegExp(`^${root.id}  instance  active`))
    const ids = lines.map((l) => /([0-9a-f-]{36})/.exec(l)![1])
    expect(ids[0]).toBe(root.id)
    // a's subtree comes right under a; the last child closes with └─
    const ai = ids.indexOf(a.id)
    expect(ids[ai + 1]).toBe(a1.id)
    expect(lines[ai]).toMatch(/^[├└]─ /)
    expect(lines[ai + 1]).toMatch(ai === 1 ? /^│  └─ / : /^   └─ /)
    expect(lines.filter((l) => l.startsWith("└─ "))).toHaveLength(1)

    expect((await caracal(["agents", "suspend", a.id], env)).stdout.trim()).toBe(`agent ${a.id}: suspended`)
    expect((await a1.refresh()).status).toBe("suspended")
    expect((await caracal(["agents", "resume", a.id, "--json"], env)).stdout).toContain('"status":"active"')
    expect((await a1.refresh()).status).toBe("active")

    const edge = await sdk.delegate({ to: b, scopes: ["read"], ttlSeconds: 120 }, root)
    const edges = await caracal(["delegations", "list", "--agent", root.id], env)
    expect(edges.stdout).toMatch(/^DIRECTION\s+ID\s+SOURCE\s+TARGET/)
    expect(edges.stdout).toMatch(new RegExp(`outbound\\s+${edge.id}\\s+${root.id}\\s+${b.id}`))
    const traversed = await caracal(["delegations", "traverse", edge.id], env)
    expect(traversed.stdout).toContain(`${edge.id}  ${root.id} → ${b.id}  [read]  active`)
    expect((await caracal(["delegations", "revoke", edge.id], env)).stdout.trim()).toBe(`delegation ${edge.id}: revoked (with every edge downstream)`)

    const ended = await caracal(["agents", "terminate", root.id, "--reason", "operator"], env)
    expect(ended.stdout.trim()).toBe(`agent ${root.id}: terminated (with its subtree)`)
    expect(await a1.refresh()).toMatchObject({ status: "terminated" })

    // without CARACAL_COORDINATOR_TOKEN, caracal.toml's application obtains a mandate
    const viaToml = await caracal(["agents", "get", root.id, "--json"], {
      CARACAL_COORDINATOR_URL: z.coordinator.url,
      CARACAL_CONFIG: writeConfig("agents.toml", toml(""))
    })
    expect(viaToml.code, viaToml.stderr).toBe(0)
    expect(JSON.parse(viaToml.stdout)).toMatchObject({ id: root.id, status: "terminated", end_reason: "operator" })
    const forged = await caracal(["agents", "list"], { ...env, CARACAL_COORDINATOR_TOKEN: "not-a-jwt" })
    expect(forged.code).toBe(4)
    expect(forged.stderr).toContain("invalid_token")
  })
})

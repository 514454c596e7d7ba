// Issue 13's end-to-end paths through every service over HTTP (sts, api, coordinator,
// gateway; an upstream on loopback), with the SDK and the CLI as a user runs them: an agent
// spawns a child, delegates a narrower scope, the child calls the upstream through the
// gateway with the SDK's fetch; terminating the root cuts a mandate its subtree already
// held (polled, the delay printed); a replayed mandate and a too-deep spawn are refused with
// their codes; `caracal run` injects a mandate the child uses at the gateway and blocks an
// MCP server the sts refuses. (The audit timeline of these calls joins when the audit
// service lands.)
import { spawn } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { nodeBinary, repoRoot } from "../../core/testing/index.ts"
import { type Caracal, CaracalError } from "../../sdk/src/index.ts"
import { type GatewayHarness, sdkFor, startGatewayStack } from "../fixtures/gateway.ts"

let g: GatewayHarness
let caracal: Caracal
const UPSTREAM = "https://reports.example"

beforeAll(async () => {
  g = await startGatewayStack("e2e_sdk_cli")
  // an MCP tool server the zone knows but has not bound to the application: the sts refuses it
  await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "mcp:unbound", scopes: ["tools:call"] })
  caracal = await sdkFor(g, [{ resourceId: "api", upstreamPrefix: UPSTREAM }])
}, 180_000)
afterAll(async () => {
  await g?.close()
})

describe("an agent tree working through the gateway", () => {
  it("spawns a child, delegates a narrower scope, and the child's SDK fetch reaches the upstream", async () => {
    const answer = await caracal.spawn(async (root) =>
      root.spawn(async (child) => {
        const edge = await root.delegate({ to: child, scopes: ["read"], resources: ["api"], ttlSeconds: 120 })
        return caracal.asDelegate(edge, async () => {
          const res = await caracal.fetch(`${UPSTREAM}/quarterly?year=2026`)
          return { status: res.status, body: await res.json(), edge: edge.id, child: child.id }
        })
      }))
    expect(answer.status).toBe(200)
    expect(answer.body).toMatchObject({ ok: true, path: "/base/quarterly?year=2026" })
    const seen = g.upstream.seen.at(-1)!
    expect(seen.headers["x-upstream-key"]).toBe(`Key ${g.secret}`)
    expect(seen.headers.baggage).toBe(`caracal.agent_session_id=${answer.child}`)
  })

  it("terminating the root ends the subtree, and a mandate the child already held is refused at the gateway", async () => {
    const root = await caracal.startSession()
    const child = await caracal.startSession({ parent: root })
    // each mandate serves one call (replays are refused), so the poll needs a supply
    const held = await Promise.all(Array.from({ length: 60 }, () => child.exchange("api").then((m) => m.accessToken)))
    expect((await child.fetch(`${UPSTREAM}/before`, undefined, { mandate: held.pop()! })).status).toBe(200)
    await root.end("operator")
    expect(await child.refresh()).toMatchObject({ status: "terminated" })
    const ended = Date.now()
    let status = 200
    while (status === 200 && held.length > 0 && Date.now() - ended < 30_000) {
      status = (await child.fetch(`${UPSTREAM}/after`, undefined, { mandate: held.pop()! })).status
      if (status === 200) await new Promise((r) => setTimeout(r, 200))
    }
    console.log(`gateway refused the terminated subtree's mandate ${Date.now() - ended} ms after the termination answered`)
    expect(status).toBe(403)
    await expect(child.exchange("api")).rejects.toMatchObject({ code: "access_denied", reason: "session_terminated" })
  })

  it("a replayed per-call mandate is refused; a spawn past MAX_DEPTH (10) is refused with its code", async () => {
    const m = await caracal.exchange("api")
    expect((await caracal.fetch(`${UPSTREAM}/r`, undefined, { mandate: m.accessToken })).status).toBe(200)
    const replay = await caracal.fetch(`${UPSTREAM}/r`, undefined, { mandate: m.accessToken })
    expect(replay.status).toBe(401)
    expect(await replay.json()).toMatchObject({ error: "replay_detected" })

    const descend = async (depth: number): Promise<unknown> =>
      caracal.spawnChild(async (a) => (a.depth === 10 ? caracal.spawnChild(() => "too deep") : descend(depth + 1)))
    const refused = await caracal.spawn(() => descend(0)).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(CaracalError)
    expect(refused).toMatchObject({ service: "coordinator", status: 429, code: "max_depth_exceeded" })
  })
})

describe("caracal run", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "caracal-e2e-run-"))
  const run = (args: ReadonlyArray<string>, toml: string) => {
    const file = path.join(dir, `${Math.random().toString(36).slice(2)}.toml`)
    writeFileSync(file, toml)
    // asynchronous: the upstream the child calls lives in this process and must keep answering
    return new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(nodeBinary(), [path.join(repoRoot, "cli/caracal.mjs"), "run", ...args], {
        cwd: dir,
        env: { PATH: process.env.PATH ?? "", HOME: dir, CARACAL_CONFIG: file },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (b: Buffer) => (stdout += b.toString()))
      child.stderr.on("data", (b: Buffer) => (stderr += b.toString()))
      child.on("exit", (status) => resolve({ status, stdout, stderr }))
    })
  }
  const toml = () => `zone_url = "${g.api.url}"\nzone_id = "${g.zone}"\napplication_id = "${g.app.id}"\napp_client_secret = "${g.app.secret}"\n`

  it("injects a mandate the child uses at the gateway, and blocks an MCP server the sts refuses", async () => {
    const call = `fetch(${JSON.stringify(`${g.gateways[0]!.url}/from-child`)}, { headers: { authorization: 'Bearer ' + process.env.API_TOKEN, 'x-caracal-resource': 'api' } }).then((r) => console.log(r.status))`
    const ok = await run(["--", nodeBinary(), "-e", call], `${toml()}\n[[credentials]]\nenv = "API_TOKEN"\nresource = "api"\n`)
    expect(ok.status, ok.stderr).toBe(0)
    expect(ok.stdout.trim()).toBe("200")
    expect(g.upstream.seen.at(-1)!.url).toBe("/base/from-child")

    const before = g.upstream.seen.length
    const blocked = await run(["--mcp", "unbound", "--", nodeBinary(), "-e", call], `${toml()}\n[mcp_governance]\nmode = "block"\n`)
    expect(blocked.status).toBe(4)
    expect(blocked.stderr).toContain("MCP server unbound not launched: invalid_target")
    expect(blocked.stdout).toBe("")
    expect(g.upstream.seen.length).toBe(before)
  })
})

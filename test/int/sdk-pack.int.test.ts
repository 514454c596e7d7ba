// The SDK as a user gets it: `npm pack` (its prepack builds dist/), the tarball installed
// in a fresh project, a TypeScript consumer type-checked against the shipped declarations,
// and the same program run as ESM (import) and as CommonJS (require).
import { execFileSync } from "node:child_process"
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import os from "node:os"
import path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../../core/stack-env.ts"

let dir: string

// the program each format runs: a governed call with a pre-minted mandate reaches a local
// listener standing in for the gateway, an ungoverned one goes straight, config errors are typed
const program = (load: string) => `${load}
const http = require_or_import_http
const seen = []
const server = http.createServer((req, res) => { seen.push({ path: req.url, resource: req.headers["x-caracal-resource"], auth: req.headers.authorization, traceparent: req.headers.traceparent }); res.end("ok") })
server.listen(0, "127.0.0.1", async () => {
  const base = "http://127.0.0.1:" + server.address().port
  const subjectToken = "x." + Buffer.from(JSON.stringify({ iss: "http://sts.invalid" })).toString("base64url") + ".y"
  const caracal = new sdk.Caracal({
    coordinator: new sdk.CoordinatorClient({ baseUrl: "http://127.0.0.1:1" }),
    zoneId: "z", applicationId: "a", subjectToken, gatewayUrl: base,
    resources: [{ resourceId: "api", upstreamPrefix: "http://upstream.test" }]
  })
  await caracal.fetch("http://upstream.test/items/1", undefined, { mandate: "m1" })
  await caracal.fetch(base + "/direct")
  let configError
  try { sdk.Caracal.fromEnv({}) } catch (e) { configError = e instanceof sdk.CaracalConfigError && e.variable }
  let unreachable
  try { await caracal.startSession() } catch (e) { unreachable = e instanceof sdk.CaracalError && e.code }
  console.log(JSON.stringify({ seen, configError, unreachable }))
  server.close()
})
`

const consumer = `import { Caracal, CoordinatorClient, CaracalError, type AgentKind, type ResourceBinding } from "@caracal/sdk"
const kind: AgentKind = "ephemeral"
const resources: ResourceBinding[] = [{ resourceId: "api", upstreamPrefix: "http://upstream:3000" }]
const caracal = new Caracal({ coordinator: new CoordinatorClient({ baseUrl: "http://localhost:4000" }), zoneId: "z", applicationId: "a",
  subjectToken: "t", gatewayUrl: "http://localhost:8081", resources, defaultKind: kind, defaultTtlSeconds: 60 })
export const run = (): Promise<number> => caracal.spawn(async (agent) => {
  const res: Response = await caracal.fetch("http://upstream:3000/x")
  const child: string = await agent.spawn(async (c) => c.id)
  return res.status + child.length
}).catch((e: unknown) => (e instanceof CaracalError ? e.status : -1))
`

beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "caracal-sdk-pack-"))
  execFileSync("npm", ["pack", "--pack-destination", dir], { cwd: path.join(repoRoot, "sdk"), stdio: "pipe" })
  const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"))!
  writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "consumer", version: "1.0.0", private: true }))
  // no runtime dependencies: the install needs no registry
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", `./${tarball}`], { cwd: dir, stdio: "pipe" })
}, 120_000)
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("the packed SDK in a fresh project", () => {
  it("ships dist only, with no runtime dependencies", () => {
    const pkg = createRequire(path.join(dir, "package.json"))("@caracal/sdk/package.json") as Record<string, unknown>
    expect(pkg.dependencies).toBeUndefined()
    const files = readdirSync(path.join(dir, "node_modules/@caracal/sdk/dist/esm"))
    expect(files).toEqual(expect.arrayContaining(["index.js", "index.d.ts", "caracal.js"]))
    expect(readdirSync(path.join(dir, "node_modules/@caracal/sdk"))).not.toContain("src")
  })

  it("type-checks a consumer against the shipped declarations", () => {
    writeFileSync(path.join(dir, "consumer.ts"), consumer)
    const tsc = path.join(repoRoot, "node_modules/typescript/bin/tsc")
    const run = (module: string) =>
      execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--module", module, "--moduleResolution", module === "nodenext" ? "nodenext" : "bundler",
        "--target", "es2022", "--lib", "es2022,dom", "--types", "", "consumer.ts"], { cwd: dir, encoding: "utf8" })
    expect(run("nodenext")).toBe("")
    expect(run("esnext")).toBe("")
  })

  for (const [format, file, load] of [
    ["ESM", "main.mjs", `import * as sdk from "@caracal/sdk"\nimport * as require_or_import_http from "node:http"`],
    ["CommonJS", "main.cjs", `const sdk = require("@caracal/sdk")\nconst require_or_import_http = require("node:http")`]
  ] as const) {
    it(`runs as ${format}`, () => {
      writeFileSync(path.join(dir, file), program(load))
      const out = JSON.parse(execFileSync(process.execPath, [file], { cwd: dir, encoding: "utf8", timeout: 30_000 }))
      expect(out.seen[0]).toMatchObject({ path: "/items/1", resource: "api", auth: "Bearer m1" })
      expect(out.seen[0].traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
      expect(out.seen[1]).toMatchObject({ path: "/direct" })
      expect(out.seen[1].resource).toBeUndefined()
      expect(out.configError).toBe("CARACAL_ZONE_ID")
      expect(out.unreachable).toBe("unreachable")
    })
  }
})

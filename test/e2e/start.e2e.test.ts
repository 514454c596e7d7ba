// `npm start`'s service runner: all five services come up on the local stack and answer
// /health and /ready with 200, the demo zone is bootstrapped (its secret kept in the data
// directory, never printed), the commands it prints for a first governed call work as
// printed (the call, then its audit timeline), then they stop on SIGTERM.
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, readFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { describe, expect, it } from "vitest"
import { emptyDatabase, nodeBinary, repoRoot, waitFor } from "../../core/testing/index.ts"

const BASE = { sts: 8080, api: 3000, gateway: 8081, coordinator: 4000, audit: 9090 }

describe("when the development stack starts", () => {
  it("runs all five services, each answering /health and /ready with 200", { timeout: 120_000 }, async () => {
    // every port below the kernel's ephemeral range (32768+), where the free ports other tests take live
    const offset = 10_000 + Math.floor(Math.random() * 13_000)
    const data = mkdtempSync(path.join(os.tmpdir(), "caracal-start-"))
    // a database of its own: the stack's is shared with other checkouts, whose zone keys another ZONE_KEK sealed
    const db = await emptyDatabase("e2e_start")
    const child = spawn(nodeBinary(), [path.join(repoRoot, "infra/dev.ts")], {
      cwd: repoRoot,
      // and Redis keys of its own: other runs' streams and consumer groups are not its business
      env: { ...process.env, DEV_PORT_OFFSET: String(offset), LOG_LEVEL: "warn", XDG_DATA_HOME: data, TEST_DATABASE_URL: db.url, REDIS_KEY_PREFIX: `e2estart${offset}` },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    child.stdout.on("data", (b: Buffer) => (out += b.toString()))
    child.stderr.on("data", (b: Buffer) => (out += b.toString()))
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)))
    try {
      let ended = false
      void exited.then(() => (ended = true))
      await waitFor(async () => {
        if (ended) throw new Error("the development stack exited before it was up")
        return out.includes("Caracal is up")
      }, 90_000, 100).catch((e) => {
        // what the services said is the only clue to why they did not come up
        console.log(out.slice(-6000))
        throw e
      })
      for (const [name, port] of Object.entries(BASE)) {
        const health = await fetch(`http://127.0.0.1:${port + offset}/health`)
        expect(health.status, name).toBe(200)
        expect(await health.json()).toMatchObject({ service: name })
        expect((await fetch(`http://127.0.0.1:${port + offset}/ready`)).status, name).toBe(200)
      }
      const demo = JSON.parse(readFileSync(path.join(data, "caracal", "demo.json"), "utf8"))
      expect(out).toContain(`demo zone ${demo.zone_id}`)
      expect(demo.application_id).toBeTruthy()
      if (demo.client_secret) expect(out).not.toContain(demo.client_secret)

      // the printed commands, run as printed (npx caracal is this checkout's bin; a working
      // directory of the test's, so the caracal.toml they write lands there)
      await waitFor(async () => out.includes("caracal audit timeline"), 10_000, 100)
      const commands = out.split("\n").filter((l) => l.startsWith("  $ ")).map((l) => l.slice(4))
      expect(commands).toHaveLength(3)
      const cwd = mkdtempSync(path.join(os.tmpdir(), "caracal-first-call-"))
      const bin = `${nodeBinary()} ${path.join(repoRoot, "cli/caracal.mjs")}`
      // the user's environment: the CLI reads the same database the services use
      const env = { ...process.env, XDG_DATA_HOME: data, DATABASE_URL: db.url }
      const run = (c: string) => execFileSync("sh", ["-c", c.replace("npx caracal", bin)], { cwd, env, encoding: "utf8", timeout: 60_000 })
      run(commands[0]!)
      expect(run(commands[1]!)).toMatch(/^200 \{"upstream":"demo","method":"GET","path":"\/hello"/)
      // the audit service chains the gateway's record within moments: the timeline shows the call
      let timeline = ""
      await waitFor(async () => {
        try {
          timeline = run(commands[2]!)
          return timeline.includes("proxy")
        } catch {
          return false
        }
      }, 30_000, 500)
      expect(timeline).toMatch(/gateway +proxy ALLOW +client_id=.* resource=demo-api/)
    } finally {
      child.kill("SIGTERM")
    }
    expect(await exited).toBe(0)
    await db.drop()
  })
})

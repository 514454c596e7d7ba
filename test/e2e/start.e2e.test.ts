// `npm start`'s service runner: all five services come up on the local stack and answer
// /health and /ready with 200, then stop on SIGTERM.
import { spawn } from "node:child_process"
import path from "node:path"
import { describe, expect, it } from "vitest"
import { nodeBinary, repoRoot, waitFor } from "../../core/testing/index.ts"

const BASE = { sts: 8080, api: 3000, gateway: 8081, coordinator: 4000, audit: 9090 }

describe("when the development stack starts", () => {
  it("runs all five services, each answering /health and /ready with 200", async () => {
    const offset = 20_000 + Math.floor(Math.random() * 20_000)
    const child = spawn(nodeBinary(), [path.join(repoRoot, "infra/dev.ts")], {
      cwd: repoRoot,
      env: { ...process.env, DEV_PORT_OFFSET: String(offset), LOG_LEVEL: "warn" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    child.stdout.on("data", (b: Buffer) => (out += b.toString()))
    child.stderr.on("data", (b: Buffer) => (out += b.toString()))
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)))
    try {
      await waitFor(async () => out.includes("Caracal is up"), 60_000, 100)
      for (const [name, port] of Object.entries(BASE)) {
        const health = await fetch(`http://127.0.0.1:${port + offset}/health`)
        expect(health.status, name).toBe(200)
        expect(await health.json()).toMatchObject({ service: name })
        expect((await fetch(`http://127.0.0.1:${port + offset}/ready`)).status, name).toBe(200)
      }
    } finally {
      child.kill("SIGTERM")
    }
    expect(await exited).toBe(0)
  })
})

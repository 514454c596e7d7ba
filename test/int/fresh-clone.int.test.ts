// The README's promise: on a fresh clone, `npm test` (and `npm start`, through the same
// infra/deps.sh) works without a separate install — the dependencies are installed when
// missing, and not again once they are current.
import { execFileSync, spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { repoRoot } from "../../core/stack-env.ts"

const dir = mkdtempSync(path.join(os.tmpdir(), "caracal-clone-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("a fresh clone", () => {
  it("npm test installs what is missing, then runs the tests; a second run installs nothing", { timeout: 400_000 }, () => {
    execFileSync("git", ["clone", "--quiet", "--no-hardlinks", repoRoot, dir])
    // the npm cache answers what an earlier install fetched; the registry only for the rest
    const env: Record<string, string | undefined> = { ...process.env, npm_config_prefer_offline: "true", NO_COLOR: "1", FORCE_COLOR: "0" }
    delete env.NODE_OPTIONS
    const npmTest = () => spawnSync("npm", ["test", "--", "test/unit/sdk.unit.test.ts"], { cwd: dir, env, encoding: "utf8", timeout: 360_000 })
    const first = npmTest()
    expect(first.status, first.stderr.slice(-3000)).toBe(0)
    expect(first.stderr).toContain("installing dependencies (npm ci)")
    expect(first.stdout).toMatch(/Tests\s+\S*\s*5 passed/)
    const second = npmTest()
    expect(second.status, second.stderr.slice(-3000)).toBe(0)
    expect(second.stderr).not.toContain("installing dependencies")
  })
})

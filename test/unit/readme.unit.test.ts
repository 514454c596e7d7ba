import { readFileSync } from "node:fs"
import path from "node:path"
import { describe, expect, it } from "vitest"
import { withTable } from "../../core/config/docs.ts"
import { repoRoot } from "../../core/testing/stack.ts"
import { serviceSpecs } from "../../services/specs.ts"

describe("the README", () => {
  it("shows the configuration table generated from the definitions (run npm run docs:config)", () => {
    const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8")
    expect(readme).toBe(withTable(readme, serviceSpecs))
  })
})

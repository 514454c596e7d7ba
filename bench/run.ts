// `npm run bench` runs every benchmark in bench/*.bench.ts, one after another (they must
// not compete for the two cores); `npm run bench -- <name>` runs one.
import { spawnSync } from "node:child_process"
import { readdirSync } from "node:fs"
import path from "node:path"
import { nodeBinary, repoRoot } from "../core/testing/index.ts"

const dir = path.join(repoRoot, "bench")
const all = readdirSync(dir).filter((f) => f.endsWith(".bench.ts")).map((f) => f.replace(/\.bench\.ts$/, "")).sort()
const wanted = process.argv.slice(2)
const unknown = wanted.filter((w) => !all.includes(w))
if (unknown.length > 0) {
  console.error(`unknown benchmark: ${unknown.join(", ")} (known: ${all.join(", ")})`)
  process.exit(1)
}
let failed = false
for (const name of wanted.length > 0 ? wanted : all) {
  const r = spawnSync(nodeBinary(), [path.join(dir, `${name}.bench.ts`)], { stdio: "inherit", cwd: repoRoot })
  if (r.status !== 0) failed = true
}
process.exit(failed ? 1 : 0)

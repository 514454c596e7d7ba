// What a query leaves behind in the heap: rows nobody holds after a query must die young.
// pg's promise form keeps each query (and its rows) reachable for minor collections until the
// next full one (core/db/database.ts); core/db's pool runs queries through the callback form.
import { execFileSync } from "node:child_process"
import { describe, expect, it } from "vitest"
import { stackEnv } from "../../core/stack-env.ts"

/** Old-space growth (KB) after 300 queries of 200 rows (~20 KB each) through a pool of `kind`. */
const retainedKb = (kind: "caracal" | "plain") => {
  const out = execFileSync(process.execPath, ["--expose-gc", "test/fixtures/query-retention.ts", kind, stackEnv().DATABASE_URL], { encoding: "utf8" })
  const [grew, rows] = out.trim().split(" ").map(Number)
  expect(rows).toBe(60_000)
  return grew!
}

describe("query results and the heap", () => {
  it("lets a query's rows die young over core/db's pool, where pg's promise form promotes them", () => {
    const caracal = retainedKb("caracal")
    const plain = retainedKb("plain")
    // ~6 MB of rows pass through: plain pg promoted ~11,000 KB of it, core/db's pool ~70 KB
    expect(caracal).toBeLessThan(1024)
    expect(plain).toBeGreaterThan(caracal + 4096)
  })
})

// Several services starting together against an empty database: all start, the schema is applied once.
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { emptyDatabase, stackEnv, startService, type TestDatabase } from "../../core/testing/index.ts"
import { readdirSync } from "node:fs"
import path from "node:path"
import { repoRoot } from "../../core/testing/stack.ts"

let db: TestDatabase
beforeAll(async () => {
  db = await emptyDatabase("migrate")
})
afterAll(() => db.drop())

describe("when two services migrate one empty database at once", () => {
  it("both start and every migration is recorded exactly once", async () => {
    const env = { DATABASE_URL: db.url, REDIS_URL: stackEnv().REDIS_URL, INSECURE_HTTP: "true", STS_URL: "http://127.0.0.1:1" }
    const [a, b] = await Promise.all([
      startService("coordinator", env),
      startService("audit", { ...env, AUDIT_HMAC_KEY: "ab".repeat(32) })
    ])
    try {
      expect((await fetch(`${a!.url}/ready`)).status).toBe(200)
      expect((await fetch(`${b!.url}/ready`)).status).toBe(200)
      const client = new pg.Client({ connectionString: db.url })
      await client.connect()
      const { rows } = await client.query<{ name: string; n: string }>("select name, count(*) as n from kysely_migration group by name")
      await client.end()
      const files = readdirSync(path.join(repoRoot, "migrations")).filter((f) => f.endsWith(".ts")).map((f) => f.replace(/\.ts$/, ""))
      expect(rows.map((r) => r.name).sort()).toEqual(files.sort())
      for (const r of rows) expect(r.n).toBe("1")
      // exactly one of the two applied it; the other found nothing to do
      const applied = [a!, b!].map((s) => s.stdout().split("\n").filter((l) => l.includes("migrations applied")).map((l) => JSON.parse(l).applied.length))
      expect(applied.flat().sort()).toEqual([0, files.length])
    } finally {
      await Promise.all([a!.stop(), b!.stop()])
    }
  })
})

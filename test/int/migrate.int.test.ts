// Several services starting together against an empty database: all start, the schema is applied once.
// The schema is the backbone's migrations (core/migrations/) and each service's own
// (services/<name>/migrations/), applied as one order sorted by name; a name found twice is refused.
import { Effect } from "effect"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeDatabase, makeKysely } from "../../core/db/database.ts"
import { backboneMigrationFolder, FoldersMigrationProvider, migrateToLatest, migrationFolders } from "../../core/db/migrate.ts"
import { BY_INDEX, BY_JOIN } from "../../core/migrations/0018_write_group_undo_by_index.ts"
import { ALL_AT_ONCE, EACH_ALONE } from "../../core/migrations/0019_write_group_capacity_at_once.ts"
import { repoRoot } from "../../core/stack-env.ts"
import { emptyDatabase, stackEnv, startService, type TestDatabase, waitFor } from "../../core/testing/index.ts"

// names already recorded by migrated databases: they never change, wherever their files live
const RECORDED = [
  "0001_event_log",
  "0002_relay_and_projections",
  "0003_event_macs",
  "0004_coordinator",
  "0005_session_counts",
  "0006_backbone_v2",
  "0007_session_kind_service"
]

const namesIn = (dir: string) => readdirSync(dir).filter((f) => f.endsWith(".ts")).map((f) => f.replace(/\.ts$/, ""))
// the backbone's migrations plus every service's, listed here independently of core/db/migrate.ts
const union = (): Array<string> => {
  const services = path.join(repoRoot, "services")
  const folders = [
    path.join(repoRoot, "core/migrations"),
    ...readdirSync(services).map((s) => path.join(services, s, "migrations")).filter((d) => existsSync(d))
  ]
  return folders.flatMap(namesIn).sort()
}

const query = async <R extends pg.QueryResultRow>(url: string, text: string) => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(text)).rows
  } finally {
    await client.end()
  }
}

let db: TestDatabase
beforeAll(async () => {
  db = await emptyDatabase("migrate")
})
afterAll(() => db.drop())

describe("when two services migrate one empty database at once", () => {
  it("both start and every migration is recorded exactly once, in name order", async () => {
    const env = { DATABASE_URL: db.url, REDIS_URL: stackEnv().REDIS_URL, INSECURE_HTTP: "true", STS_URL: "http://127.0.0.1:1" }
    const [a, b] = await Promise.all([
      startService("coordinator", env),
      startService("audit", { ...env, AUDIT_HMAC_KEY: "ab".repeat(32), AUDIT_CHECKPOINT_KEY: "cd".repeat(32) })
    ])
    try {
      // listening comes before ready: the audit's /ready also waits for its consumer to run
      for (const s of [a!, b!]) await waitFor(async () => (await fetch(`${s.url}/ready`)).status === 200, 30_000)
      const rows = await query<{ name: string; n: string }>(db.url, "select name, count(*) as n from kysely_migration group by name")
      const files = union()
      expect(files).toEqual(expect.arrayContaining(RECORDED))
      expect(rows.map((r) => r.name).sort()).toEqual(files)
      for (const r of rows) expect(r.n).toBe("1")
      // exactly one of the two applied them, in the sorted order of the union; the other found nothing to do
      const applied = [a!, b!].flatMap((s) => s.stdout().split("\n").filter((l) => l.includes("migrations applied")).map((l) => JSON.parse(l).applied as Array<string>))
      expect(applied.map((x) => x.length).sort()).toEqual([0, files.length])
      expect(applied.find((x) => x.length > 0)).toEqual(files)
    } finally {
      await Promise.all([a!.stop(), b!.stop()])
    }
  })
})

describe("the migration folders", () => {
  it("are the backbone's and every service's, and their migrations are the sorted union", async () => {
    const folders = migrationFolders()
    expect(folders[0]).toBe(backboneMigrationFolder)
    expect(folders).toContain(path.join(repoRoot, "services/coordinator/migrations"))
    const migrations = await new FoldersMigrationProvider(folders).getMigrations()
    expect(Object.keys(migrations).sort()).toEqual(union())
  })

  it("a name found in two folders is refused, and nothing is applied", async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), "caracal-migrations-"))
    const empty = await emptyDatabase("migrate_dup")
    const database = makeDatabase(makeKysely(empty.url, 2))
    try {
      // a service folder that reuses a backbone name, beside a harmless new migration
      const dup = path.join(tmp, "dup")
      mkdirSync(dup)
      writeFileSync(path.join(dup, "0003_event_macs.mjs"), "export async function up() {}\n")
      writeFileSync(path.join(dup, "0099_fine.mjs"), "export async function up() {}\n")
      const folders = [backboneMigrationFolder, dup]
      await expect(new FoldersMigrationProvider(folders).files()).rejects.toThrow(/duplicate migration name 0003_event_macs/)
      const error = await Effect.runPromise(Effect.flip(migrateToLatest(database, empty.url, folders)))
      expect(String(error.cause)).toMatch(/duplicate migration name 0003_event_macs/)
      const tables = await query<{ n: string }>(empty.url, "select count(*) as n from information_schema.tables where table_name = 'events'")
      expect(tables[0]!.n).toBe("0")
      const recorded = await query<{ n: string }>(empty.url, "select count(*) as n from kysely_migration")
      expect(recorded[0]!.n).toBe("0")
    } finally {
      await database.db.destroy()
      await empty.drop()
      rmSync(tmp, { recursive: true, force: true })
    }
  })
})

describe("migrations 0017 and 0018 (a group's refused members' events taken back through indexes)", () => {
  let fresh: TestDatabase
  let database: ReturnType<typeof makeDatabase>
  beforeAll(async () => {
    fresh = await emptyDatabase("migrate_0017")
    database = makeDatabase(makeKysely(fresh.url, 2))
    await Effect.runPromise(migrateToLatest(database, fresh.url))
  })
  afterAll(async () => {
    await database.db.destroy()
    await fresh.drop()
  })
  const definition = async () =>
    (await query<{ d: string }>(fresh.url, "select pg_get_functiondef('caracal_write_group(jsonb, text[])'::regprocedure) as d"))[0]!.d

  it("0017 indexes outbox.event_position, so a deleted event's foreign-key check reads an index rather than the whole outbox", async () => {
    const leading = await query<{ column: string }>(fresh.url, `
      select a.attname as column from pg_index i
      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
      where i.indrelid = 'outbox'::regclass and i.indpred is null`)
    expect(leading.map((r) => r.column)).toContain("event_position")
  })

  it("0018 replaces that one statement of 0009's function, gives it back when undone, and refuses a function that lacks it", async () => {
    const upgraded = await definition()
    expect(upgraded).toContain(BY_INDEX)
    expect(upgraded).not.toContain(BY_JOIN)

    const migrations = await new FoldersMigrationProvider(migrationFolders()).getMigrations()
    const m0018 = migrations["0018_write_group_undo_by_index"]!
    await m0018.down!(database.db)
    // the function is again exactly what 0009 wrote
    expect(await definition()).toBe(upgraded.replace(BY_INDEX, BY_JOIN))

    await m0018.up(database.db)
    expect(await definition()).toBe(upgraded)
    // a second run finds no statement to replace and refuses rather than doing nothing
    await expect(m0018.up(database.db)).rejects.toThrow(/does not hold the statement this migration replaces/)
    expect(await definition()).toBe(upgraded)
  })

  it("0019 replaces the capacity loop with one statement (and the loop as its fallback), and gives the loop back when undone", async () => {
    const upgraded = await definition()
    expect(upgraded).toContain(ALL_AT_ONCE)
    expect(upgraded).not.toContain(EACH_ALONE)
    const migrations = await new FoldersMigrationProvider(migrationFolders()).getMigrations()
    const m0019 = migrations["0019_write_group_capacity_at_once"]!
    await m0019.down!(database.db)
    expect(await definition()).toBe(upgraded.replace(ALL_AT_ONCE, EACH_ALONE))
    await m0019.up(database.db)
    expect(await definition()).toBe(upgraded)
    await expect(m0019.up(database.db)).rejects.toThrow(/does not hold the statement this migration replaces/)
  })
})

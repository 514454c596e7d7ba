// A fresh, migrated Postgres database per test file, so files run in parallel.
import { randomBytes } from "node:crypto"
import pg from "pg"
import { Effect } from "effect"
import { makeDatabase, makeKysely, type DatabaseShape } from "../db/database.ts"
import { migrateToLatest } from "../db/migrate.ts"
import { stackEnv } from "./stack.ts"

const withAdmin = async <A>(f: (c: pg.Client) => Promise<A>): Promise<A> => {
  const admin = new pg.Client({ connectionString: stackEnv().DATABASE_URL })
  await admin.connect()
  try {
    return await f(admin)
  } finally {
    await admin.end()
  }
}

/**
 * DROP … WITH (FORCE) refuses when a backend it cannot signal is in the database — an
 * autovacuum worker, busy after a heavy test: that one ends on its own, so try again.
 */
const dropForced = async (name: string) => {
  for (let attempt = 1; ; attempt++) {
    try {
      await withAdmin((c) => c.query(`drop database if exists ${name} with (force)`))
      return
    } catch (e) {
      if ((e as { code?: string }).code !== "42501" || attempt >= 50) throw e
      await new Promise((r) => setTimeout(r, 200))
    }
  }
}

export interface TestDatabase {
  readonly name: string
  readonly url: string
  /** Drops the database (connections of services still using it are terminated). */
  readonly drop: () => Promise<void>
}

/** An empty database (no migrations applied); `label` shows up in its name for debugging. */
export const emptyDatabase = async (label: string): Promise<TestDatabase> => {
  const name = `t_${label.replace(/[^a-z0-9]/gi, "_").toLowerCase().slice(0, 30)}_${randomBytes(4).toString("hex")}`
  await withAdmin((c) => c.query(`create database ${name}`))
  const url = new URL(stackEnv().DATABASE_URL)
  url.pathname = `/${name}`
  return {
    name,
    url: url.toString(),
    drop: () => dropForced(name)
  }
}

/** A migrated database plus a Kysely handle; `close` destroys the pool and drops the database. */
export const freshDatabase = async (label: string): Promise<TestDatabase & { readonly database: DatabaseShape; readonly close: () => Promise<void> }> => {
  const t = await emptyDatabase(label)
  const database = makeDatabase(makeKysely(t.url, 8))
  await Effect.runPromise(migrateToLatest(database, t.url))
  return {
    ...t,
    database,
    close: async () => {
      await database.db.destroy()
      await t.drop()
    }
  }
}

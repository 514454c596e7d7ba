// `npm run migrate`: applies pending migrations to DATABASE_URL (the local stack's by default).
import { Effect } from "effect"
import { makeDatabase, makeKysely } from "../core/db/database.ts"
import { migrateToLatest } from "../core/db/migrate.ts"
import { stackEnv } from "../core/stack-env.ts"

const url = process.env.DATABASE_URL ?? stackEnv().DATABASE_URL
const database = makeDatabase(makeKysely(url, 2))
try {
  const report = await Effect.runPromise(migrateToLatest(database, url))
  console.log(report.applied.length === 0 ? "migrations: up to date" : `migrations applied: ${report.applied.join(", ")}`)
} finally {
  await database.db.destroy()
}

// Applies migrations/ with Kysely's Migrator. Several services starting together are
// safe: Kysely creates its bookkeeping tables *before* taking its own lock, and two
// concurrent CREATE TABLE IF NOT EXISTS can still collide, so the whole run is wrapped
// in a session-level advisory lock held on a dedicated connection.
import { Effect } from "effect"
import { FileMigrationProvider, Migrator } from "kysely"
import { promises as fs } from "node:fs"
import path from "node:path"
import pg from "pg"
import { type DatabaseShape, DbError } from "./database.ts"

const MIGRATIONS_DIR = path.resolve(import.meta.dirname, "../../migrations")
// an arbitrary constant shared by every Caracal service ("caracal" in ASCII)
const MIGRATION_LOCK = 0x636172616361

export interface MigrationReport {
  readonly applied: ReadonlyArray<string>
}

export const migrateToLatest = (database: DatabaseShape, url: string): Effect.Effect<MigrationReport, DbError> =>
  Effect.tryPromise({
    try: async () => {
      const lockClient = new pg.Client({ connectionString: url })
      await lockClient.connect()
      try {
        await lockClient.query("select pg_advisory_lock($1)", [MIGRATION_LOCK])
        const migrator = new Migrator({
          db: database.db,
          provider: new FileMigrationProvider({ fs, path, migrationFolder: MIGRATIONS_DIR })
        })
        const { error, results } = await migrator.migrateToLatest()
        if (error) throw error
        return { applied: (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName) }
      } finally {
        await lockClient.query("select pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch(() => undefined)
        await lockClient.end()
      }
    },
    catch: (cause) => new DbError({ cause })
  })

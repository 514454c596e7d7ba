// Applies the Postgres migrations with Kysely's Migrator: the backbone's (core/migrations/)
// and each service's own (services/<name>/migrations/), found by that convention, so core
// names no service. They form ONE order: Kysely sorts every migration by name across all
// folders (0004 of one service runs between 0003 and 0006 of the backbone), and an
// already-migrated database knows them by those names, so a migration keeps its file name
// when it moves; two files with one name anywhere are refused.
//
// Several services starting together are safe: Kysely creates its bookkeeping tables
// *before* taking its own lock, and two concurrent CREATE TABLE IF NOT EXISTS can still
// collide, so the whole run is wrapped in a session-level advisory lock held on a
// dedicated connection.
import { Effect } from "effect"
import { type Migration, type MigrationProvider, Migrator } from "kysely"
import { existsSync, promises as fs, readdirSync } from "node:fs"
import path from "node:path"
import { pathToFileURL } from "node:url"
import pg from "pg"
import { type DatabaseShape, DbError } from "./database.ts"

/** The backbone's migrations (event log, relay, projections…). */
export const backboneMigrationFolder = path.resolve(import.meta.dirname, "../migrations")
const SERVICES_DIR = path.resolve(import.meta.dirname, "../../services")
// an arbitrary constant shared by every Caracal service ("caracal" in ASCII)
const MIGRATION_LOCK = 0x636172616361

/** The backbone's folder, then every services/<name>/migrations/ that exists. */
export const migrationFolders = (): ReadonlyArray<string> => {
  const services = existsSync(SERVICES_DIR)
    ? readdirSync(SERVICES_DIR, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => path.join(SERVICES_DIR, e.name, "migrations"))
      .filter((dir) => existsSync(dir))
      .sort()
    : []
  return [backboneMigrationFolder, ...services]
}

// the file types Kysely's own FileMigrationProvider reads
const isMigrationFile = (file: string) =>
  /\.(?:js|mjs|ts|mts)$/u.test(file) && !/\.d\.m?ts$/u.test(file)

const isMigration = (m: unknown): m is Migration =>
  typeof m === "object" && m !== null && typeof (m as { up?: unknown }).up === "function"

/**
 * Every migration file of several folders, named by its file name without extension.
 * A name found twice (in two folders, or as .ts and .js in one) is refused with both paths,
 * as is a file that exports no `up`.
 */
export class FoldersMigrationProvider implements MigrationProvider {
  readonly folders: ReadonlyArray<string>

  constructor(folders: ReadonlyArray<string>) {
    this.folders = folders
  }

  /** Migration name → file, checked for duplicates; nothing is imported. */
  async files(): Promise<ReadonlyMap<string, string>> {
    const files = new Map<string, string>()
    for (const folder of this.folders) {
      for (const file of (await fs.readdir(folder)).filter(isMigrationFile).sort()) {
        const name = file.slice(0, file.lastIndexOf("."))
        const where = path.join(folder, file)
        const first = files.get(name)
        if (first !== undefined) throw new Error(`duplicate migration name ${name}: ${first} and ${where}`)
        files.set(name, where)
      }
    }
    return files
  }

  async getMigrations(): Promise<Record<string, Migration>> {
    const migrations: Record<string, Migration> = {}
    for (const [name, file] of await this.files()) {
      const module: unknown = await import(pathToFileURL(file).href)
      const migration = isMigration((module as { default?: unknown }).default) ? (module as { default: Migration }).default : module
      if (!isMigration(migration)) throw new Error(`${file} is not a migration: it exports no up function`)
      migrations[name] = migration
    }
    return migrations
  }
}

export interface MigrationReport {
  /** The migrations this run applied, in the order it applied them. */
  readonly applied: ReadonlyArray<string>
}

/** Applies every pending migration of `folders` (by default the backbone's and every service's). */
export const migrateToLatest = (
  database: DatabaseShape,
  url: string,
  folders: ReadonlyArray<string> = migrationFolders()
): Effect.Effect<MigrationReport, DbError> =>
  Effect.tryPromise({
    try: async () => {
      const lockClient = new pg.Client({ connectionString: url })
      await lockClient.connect()
      try {
        await lockClient.query("select pg_advisory_lock($1)", [MIGRATION_LOCK])
        const migrator = new Migrator({ db: database.db, provider: new FoldersMigrationProvider(folders) })
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

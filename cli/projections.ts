// `caracal projections rebuild NAME`: drops a Postgres read model and replays the whole
// log into it, with a progress bar. Services register their projections in `projections`
// under the name they run with, so the CLI rebuilds exactly what the service maintains.
import { type Kysely, sql } from "kysely"
import type { Tables } from "../core/db/tables.ts"
import { type CatchUpProgress, type PgProjection, rebuildPostgres } from "../core/projection.ts"
import type { Verifier } from "../core/signing.ts"
import type { EventRegistry } from "../schemas/registry.ts"
import { principalsProjection } from "../services/coordinator/api-status.ts"
import { apiProjection } from "../services/api/projection.ts"
import { coordinatorProjection } from "../services/coordinator/projection.ts"
import { zoneKeysProjection } from "../services/sts/key-projection.ts"
import { zonesProjection } from "../services/sts/key-provisioning.ts"
import { policiesProjection } from "../services/sts/policy-sync.ts"
import { type Out, UsageError } from "./output.ts"

export const projections = new Map<string, PgProjection>([
  [coordinatorProjection.name, coordinatorProjection],
  [principalsProjection.name, principalsProjection],
  [apiProjection.name, apiProjection],
  [zoneKeysProjection.name, zoneKeysProjection],
  [zonesProjection.name, zonesProjection],
  [policiesProjection.name, policiesProjection]
])

export const findProjection = (name: string, known: ReadonlyMap<string, PgProjection> = projections): PgProjection => {
  const found = known.get(name)
  if (found !== undefined) return found
  const names = [...known.keys()].sort()
  throw new UsageError(`unknown projection ${JSON.stringify(name)}; known projections: ${names.length > 0 ? names.join(", ") : "(none registered)"}`)
}

/** `[#######.......]  45%  450/1000 events`; the total is a count taken before the rebuild, so it is clamped. */
export const progressBar = (done: number, total: number, width = 30): string => {
  const ratio = total <= 0 ? 1 : Math.min(1, done / total)
  const filled = Math.round(ratio * width)
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(Math.floor(ratio * 100)).padStart(3)}%  ${done}/${Math.max(done, total)} events`
}

export const formatDuration = (ms: number) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`)

export interface RebuildDeps {
  readonly db: Kysely<Tables>
  readonly registry: EventRegistry
  /** The final summary line. */
  readonly out: Out
  /** Raw terminal output for the bar (stderr): each update starts with \r to redraw the line. */
  readonly progress: (chunk: string) => void
  readonly now?: () => number
  readonly batchSize?: number
  /** With keys, every log row's MAC is checked and a tampered log stops the rebuild. */
  readonly verifier?: Verifier | undefined
}

export const rebuildProjection = async (deps: RebuildDeps, projection: PgProjection): Promise<CatchUpProgress & { readonly ms: number }> => {
  const now = deps.now ?? (() => performance.now())
  const started = now()
  const { rows } = await sql<{ n: string }>`select count(*)::text as n from events`.execute(deps.db)
  const total = Number(rows[0]?.n ?? 0)
  deps.progress(`\r${progressBar(0, total)}`)
  const result = await rebuildPostgres(deps.db, deps.registry, projection, {
    ...(deps.batchSize === undefined ? {} : { batchSize: deps.batchSize }),
    verifier: deps.verifier,
    onProgress: (p) => deps.progress(`\r${progressBar(p.applied, total)}`)
  })
  deps.progress("\n")
  const ms = now() - started
  deps.out(`rebuilt ${projection.name}: ${result.applied} events in ${formatDuration(ms)}`)
  return { ...result, ms }
}

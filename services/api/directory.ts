// What the api's consumers (the sts, the gateway) know of its world — zones, applications
// (with their secret verifiers and allowed scopes), resources, providers, credentials
// (references: the material is sealed in sts_credentials), bindings and grants — as an
// in-memory projection every replica keeps (the sts's token endpoint and the gateway read
// it on every request, so it must answer in microseconds). It catches up from
// the log at start and follows the api's streams; a miss is answered from the log before
// refusing (read-your-writes: create an application, exchange at once).
import { sql, type Kysely } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import { MemoryProjectionRunner, type Projection } from "../../core/projection.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import {
  apiAggregates,
  type ApplicationRecord,
  type BindingRecord,
  type CredentialRecord,
  events as apiRegistry,
  type GrantRecord,
  type ProviderRecord,
  type ResourceRecord
} from "./events.ts"

export interface Entry<R> {
  readonly id: string
  readonly zoneId: string
  readonly live: boolean
  readonly record: R
}

export interface DirectoryState {
  readonly zones: Map<string, Entry<unknown>>
  readonly applications: Map<string, Entry<ApplicationRecord>>
  readonly resources: Map<string, Entry<ResourceRecord>>
  readonly providers: Map<string, Entry<ProviderRecord>>
  readonly credentials: Map<string, Entry<CredentialRecord>>
  readonly bindings: Map<string, Entry<BindingRecord>>
  readonly grants: Map<string, Entry<GrantRecord>>
  /** zone \0 identifier → resource id (live resources only). */
  readonly resourceIds: Map<string, string>
  /** zone \0 application \0 resource → binding id (live bindings only). */
  readonly bindingIds: Map<string, string>
  /** zone \0 application \0 user \0 resource → grant id (live grants only). */
  readonly grantIds: Map<string, string>
}

const TYPES = ["zone", "application", "resource", "provider", "credential", "binding", "grant"] as const
export type DirectoryType = (typeof TYPES)[number]

const key = (...parts: ReadonlyArray<string>) => parts.join("\u0000")

const ENDS = new Map<string, DirectoryType>(TYPES.map((t) => [apiAggregates[t].ended, t]))
const handled = TYPES.flatMap((t) => {
  const p = apiAggregates[t].prefix
  return [`${p}Created`, `${p}Updated`, apiAggregates[t].ended]
}).concat(["ApplicationSecretRotated"])

export const emptyDirectory = (): DirectoryState => ({
  zones: new Map(),
  applications: new Map(),
  resources: new Map(),
  providers: new Map(),
  credentials: new Map(),
  bindings: new Map(),
  grants: new Map(),
  resourceIds: new Map(),
  bindingIds: new Map(),
  grantIds: new Map()
})

const MAPS = {
  zone: "zones",
  application: "applications",
  resource: "resources",
  provider: "providers",
  credential: "credentials",
  binding: "bindings",
  grant: "grants"
} as const satisfies Record<DirectoryType, keyof DirectoryState>

const mapOf = (s: DirectoryState, t: DirectoryType): Map<string, Entry<any>> => s[MAPS[t]] as Map<string, Entry<any>>

/** The secondary index entry of a record, if its type has one. */
const indexOf = (s: DirectoryState, t: DirectoryType, e: Entry<any>): [Map<string, string>, string] | undefined => {
  if (t === "resource") return [s.resourceIds, key(e.zoneId, (e.record as ResourceRecord).identifier)]
  if (t === "binding") {
    const b = e.record as BindingRecord
    return [s.bindingIds, key(e.zoneId, b.applicationId, b.resourceId)]
  }
  if (t === "grant") {
    const g = e.record as GrantRecord
    return [s.grantIds, key(e.zoneId, g.applicationId, g.userId, g.resourceId)]
  }
  return undefined
}

export const applyToDirectory = (s: DirectoryState, e: Envelope): void => {
  const t = e.aggregate.type as DirectoryType
  if (!TYPES.includes(t)) return
  const map = mapOf(s, t)
  const before = map.get(e.aggregate.id)
  const ended = ENDS.get(e.type) === t
  const entry: Entry<any> = ended
    ? { ...(before ?? { id: e.aggregate.id, zoneId: e.zoneId, record: {} }), live: false }
    : { id: e.aggregate.id, zoneId: e.zoneId, live: true, record: e.data }
  map.set(e.aggregate.id, entry)
  // the secondary index names live records only; a changed record may have moved
  const old = before === undefined ? undefined : indexOf(s, t, before)
  if (old && old[0].get(old[1]) === e.aggregate.id) old[0].delete(old[1])
  const now = indexOf(s, t, entry)
  if (now && entry.live) now[0].set(now[1], e.aggregate.id)
}

export const directoryProjection: Projection<DirectoryState> = {
  name: "api-directory",
  handles: new Set(handled),
  apply: applyToDirectory,
  reset: () => {}
}

/** The streams the directory follows. */
export const DIRECTORY_TYPES = TYPES

export interface Directory {
  readonly runner: MemoryProjectionRunner<DirectoryState>
  readonly zone: (zoneId: string) => Promise<Entry<unknown> | undefined>
  readonly application: (zoneId: string, id: string) => Promise<Entry<ApplicationRecord> | undefined>
  readonly resource: (zoneId: string, identifier: string) => Promise<Entry<ResourceRecord> | undefined>
  readonly provider: (zoneId: string, id: string) => Promise<Entry<ProviderRecord> | undefined>
  /** A credential's reference (provider, name); `live` false once CredentialRevoked. */
  readonly credential: (zoneId: string, id: string) => Promise<Entry<CredentialRecord> | undefined>
  readonly binding: (zoneId: string, applicationId: string, resourceId: string) => Promise<Entry<BindingRecord> | undefined>
  readonly grant: (zoneId: string, applicationId: string, userId: string, resourceId: string) => Promise<Entry<GrantRecord> | undefined>
  /**
   * Applies what the log holds of one aggregate beyond what the projection has seen: for a
   * hit that must not be stale (a revocation the stream has not delivered yet).
   */
  readonly refresh: (type: DirectoryType, id: string) => Promise<void>
}

export const makeDirectory = (db: Kysely<Tables>): Directory => {
  const runner = new MemoryProjectionRunner(directoryProjection, emptyDirectory(), db, apiRegistry)
  const s = runner.state
  /** Applies what the log holds of these aggregates beyond what the projection has seen. */
  const refresh = async (type: DirectoryType, ids: ReadonlyArray<string>) => {
    for (const id of ids) await runner.refresh({ type, id })
  }
  /** Aggregates of `type` in `zone` whose records match, found in the log. */
  const logIds = async (type: DirectoryType, zoneId: string, where: Readonly<Record<string, string>>) => {
    const { rows } = await sql<{ id: string }>`select distinct aggregate_id as id from events
      where aggregate_type = ${type} and zone_id = ${zoneId}
      and ${sql.join(Object.entries(where).map(([f, v]) => sql`data->>${f} = ${v}`), sql` and `)}`.execute(db)
    return rows.map((r) => r.id)
  }
  const byId = <R>(type: DirectoryType) => async (zoneId: string, id: string): Promise<Entry<R> | undefined> => {
    const map = mapOf(s, type) as Map<string, Entry<R>>
    if (!map.has(id)) await refresh(type, [id])
    const e = map.get(id)
    return e?.zoneId === zoneId ? e : undefined
  }
  const byIndex = <R>(type: DirectoryType, index: Map<string, string>, k: string, where: () => Promise<ReadonlyArray<string>>) =>
    async (): Promise<Entry<R> | undefined> => {
      if (!index.has(k)) await refresh(type, await where())
      const id = index.get(k)
      return id === undefined ? undefined : (mapOf(s, type).get(id) as Entry<R> | undefined)
    }
  return {
    runner,
    zone: (zoneId) => byId<unknown>("zone")(zoneId, zoneId),
    application: byId<ApplicationRecord>("application"),
    provider: byId<ProviderRecord>("provider"),
    credential: byId<CredentialRecord>("credential"),
    resource: (zoneId, identifier) =>
      byIndex<ResourceRecord>("resource", s.resourceIds, key(zoneId, identifier), () => logIds("resource", zoneId, { identifier }))(),
    binding: (zoneId, applicationId, resourceId) =>
      byIndex<BindingRecord>("binding", s.bindingIds, key(zoneId, applicationId, resourceId), () =>
        logIds("binding", zoneId, { applicationId, resourceId }))(),
    grant: (zoneId, applicationId, userId, resourceId) =>
      byIndex<GrantRecord>("grant", s.grantIds, key(zoneId, applicationId, userId, resourceId), () =>
        logIds("grant", zoneId, { applicationId, userId, resourceId }))(),
    refresh: (type, id) => refresh(type, [id])
  }
}

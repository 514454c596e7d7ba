// Reads of the api's tables: records as the commands' checks need them (camelCase, with
// status), and answers as clients see them (JSON text, views.ts).
import { type Kysely, sql } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { ApiAggregateType } from "./events.ts"
import { Lru } from "../../core/lru.ts"
import { answerBody, answerEnd, type ShownRow, shownJson } from "./views.ts"

export interface RecordRow {
  readonly id: string
  readonly version: number
  readonly status: "active" | "archived"
  readonly record: Record<string, unknown>
}

export interface ListOptions {
  /** The last id of the previous page. */
  readonly after: string | undefined
  readonly limit: number
  readonly status: "active" | "archived" | undefined
  /** Record fields (camelCase) that must equal these values. */
  readonly where: Readonly<Record<string, string>>
}

/**
 * A page: its items as the bytes of a JSON array's elements and commas, in order (laid out
 * once, in the answer), and the id to continue after (null on the last page).
 */
export interface Page {
  readonly parts: ReadonlyArray<Buffer>
  /** What the page's bytes are made of (each record's id, version and key status): equal identities, equal bytes. */
  readonly identity: string
  readonly count: number
  readonly last: string | null
}

// a zone is usable once the sts has activated its signing key (sts_zone_keys: public key state only)
const KEY_STATUS = `case when type = 'zone' then
    case when exists (select 1 from sts_zone_keys k where k.zone_id = api_records.id and k.status = 'active') then 'active' else 'pending' end
  end as key_status`

/**
 * Answers' bodies (views.ts) by record id, with their version, as bytes. A record's answer
 * is fixed at a version (every event moves it), so a page reads only ids and versions and
 * reuses what it showed before: parsing eleven columns of a thousand rows and re-encoding
 * the text was most of a large page's time. 20,000 bodies are a few MB.
 */
const ANSWERS_KEPT = 20_000
interface KeptAnswer {
  readonly version: number
  readonly body: Buffer
}
const ENDS = new Map([null, "active", "pending"].map((k) => [k, Buffer.from(answerEnd(k))]))
const COMMA = Buffer.from(",")

// what an answer is made of: the view as text (never parsed here), times as ISO 8601 text
const SHOWN = sql`id, type, zone_id, version, status, view::text as view,
  to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as created_at,
  to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as updated_at,
  to_char(archived_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as archived_at,
  archive_reason, ${sql.raw(KEY_STATUS)}`

export const makeQueries = (db: Kysely<Tables>) => {
  const answers = new Lru<string, KeptAnswer>(ANSWERS_KEPT)
  const filter = (type: ApiAggregateType, zoneId: string | undefined, o: ListOptions) =>
    sql.join([
      sql`type = ${type}`,
      ...(zoneId === undefined ? [] : [sql`zone_id = ${zoneId}`]),
      ...(o.after === undefined ? [] : [sql`id > ${o.after}`]),
      ...(o.status === undefined ? [] : [sql`status = ${o.status}`]),
      ...Object.entries(o.where).map(([field, value]) => sql`record->>${field} = ${value}`)
    ], sql` and `)
  const one = async (type: ApiAggregateType, zoneId: string, id: string): Promise<RecordRow | undefined> => {
    const { rows } = await sql<RecordRow>`select id, version, status, record from api_records
      where id = ${id} and type = ${type} and zone_id = ${zoneId}`.execute(db)
    return rows[0]
  }
  return {
    one,
    /** A live record, or undefined (missing or archived). */
    live: async (type: ApiAggregateType, zoneId: string, id: string) => {
      const row = await one(type, zoneId, id)
      return row?.status === "active" ? row : undefined
    },
    /** The first live record matching `where` (the bootstrap finds its pieces by name). */
    find: async (type: ApiAggregateType, zoneId: string, where: Readonly<Record<string, string>>) => {
      const { rows } = await sql<RecordRow>`select id, version, status, record from api_records
        where ${filter(type, zoneId, { after: undefined, limit: 1, status: "active", where })} order by id limit 1`.execute(db)
      return rows[0]
    },
    /** A record as clients see it (JSON text) with its version, or undefined. */
    shown: async (type: ApiAggregateType, zoneId: string, id: string) => {
      const { rows } = await sql<ShownRow>`select ${SHOWN} from api_records
        where id = ${id} and type = ${type} and zone_id = ${zoneId}`.execute(db)
      const r = rows[0]
      return r === undefined ? undefined : { json: shownJson(r), version: r.version }
    },
    /** One page in id order (UUIDv7: creation order); reads one row more to know whether another page follows. */
    page: async (type: ApiAggregateType, zoneId: string | undefined, o: ListOptions): Promise<Page> => {
      const { rows } = await sql<Pick<ShownRow, "id" | "version" | "key_status">>`select id, version, ${sql.raw(KEY_STATUS)}
        from api_records where ${filter(type, zoneId, o)} order by id limit ${o.limit + 1}`.execute(db)
      const listed = rows.slice(0, o.limit)
      const bodies = listed.map((r) => {
        const kept = answers.peek(r.id)
        return kept?.version === r.version ? kept.body : undefined
      })
      const missing = listed.filter((_, i) => bodies[i] === undefined).map((r) => r.id)
      if (missing.length > 0) {
        const fresh = await sql<ShownRow>`select ${SHOWN} from api_records where id = any(${missing})`.execute(db)
        const byId = new Map(fresh.rows.map((r) => [r.id, r]))
        listed.forEach((r, i) => {
          // read again after the first read: a record may have moved on meanwhile (a page is not a snapshot), and shows its newer version
          const f = byId.get(r.id)
          if (bodies[i] !== undefined || f === undefined) return
          const body = Buffer.from(answerBody(f))
          answers.set(f.id, { version: f.version, body })
          bodies[i] = body
        })
      }
      const parts: Array<Buffer> = []
      listed.forEach((r, i) => {
        if (bodies[i] === undefined) return
        if (parts.length > 0) parts.push(COMMA)
        parts.push(bodies[i], ENDS.get(r.key_status)!)
      })
      const shown = listed.filter((_, i) => bodies[i] !== undefined)
      return {
        parts,
        count: shown.length,
        identity: shown.map((r) => `${r.id}.${r.version}.${r.key_status ?? ""}`).join(","),
        last: rows.length > o.limit ? listed[listed.length - 1]!.id : null
      }
    },
    /** The id a POST's Idempotency-Key created before, if any (checked before calling out to the sts). */
    priorAnswer: async (c: { idempotencyScope?: string | undefined; idempotencyKey?: string | undefined }) => {
      if (c.idempotencyKey === undefined || c.idempotencyScope === undefined) return undefined
      const { rows } = await sql<{ id: string }>`select result->>'id' as id from command_results
        where scope = ${c.idempotencyScope} and idempotency_key = ${c.idempotencyKey}`.execute(db)
      return rows[0]?.id ?? undefined
    },
    zoneBySlug: async (slug: string) => {
      const { rows } = await sql<RecordRow>`select id, version, status, record from api_records
        where type = 'zone' and status = 'active' and record->>'slug' = ${slug}`.execute(db)
      return rows[0]
    },
    versionTexts: async (ids: ReadonlyArray<string>) => {
      if (ids.length === 0) return []
      const { rows } = await sql<{ id: string; policy_id: string; rego: string }>`select id, policy_id, rego from api_policy_versions
        where id in (${sql.join(ids)})`.execute(db)
      return rows
    }
  }
}

export type Queries = ReturnType<typeof makeQueries>

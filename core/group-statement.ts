// A group written at once (core/group-commit.ts): every member's events, outbox rows,
// idempotency key, wake-up, capacity and projection rows in one statement, the way a lone
// command is written (core/command-write.ts), for a group in which nothing goes wrong.
//
// It catches nothing: a member whose sequence or key is taken, or whose capacity refuses,
// aborts the statement and nothing of the group is written; the group is then written the
// exact way (caracal_write_group), which gives each member its own outcome. When every member
// passes, the common case, the group costs one statement and one commit instead of a
// transaction of four round trips and a plpgsql function's per-member bookkeeping.
//
// Rows travel as one array per column (unnest), so the statement has the same few parameters
// whatever the group's size. The events come first in the text: the statement takes the
// events lock at parse, before it is given a transaction id, as log readers expect of a
// writer (core/eventstore.ts); the projection's tables follow in name order, as the exact
// way and a rebuild lock them.
import { type RawBuilder, sql } from "kysely"
import type { MemberWrite, Written } from "./group-commit.ts"

const EVENT_COLUMNS = [
  ["id", "uuid"],
  ["zone_id", "text"],
  ["aggregate_type", "text"],
  ["aggregate_id", "text"],
  ["sequence", "int"],
  ["type", "text"],
  ["schema_version", "int"],
  ["occurred_at", "timestamptz"],
  ["actor", "jsonb"],
  ["correlation_id", "text"],
  ["causation_id", "text"],
  ["data", "jsonb"],
  ["mac", "text"],
  ["mac_key_id", "text"]
] as const

const JSON_COLUMNS = new Set(["actor", "data"])

/** One column's values as an array parameter of its type. */
const column = (values: ReadonlyArray<unknown>, type: string) => sql`${values}::${sql.raw(type)}[]`

/**
 * The statement, and how to read each member's events back from its rows. `projection` is
 * the members' folded row changes as statements (changesSql), in table-name order.
 */
export const groupStatement = (members: ReadonlyArray<MemberWrite>, projection: ReadonlyArray<RawBuilder<unknown>>) => {
  const events = EVENT_COLUMNS.map(() => [] as Array<unknown>)
  const routes = { event_id: [] as Array<string>, stream: [] as Array<string>, producer: [] as Array<string> }
  const keys = { scope: [] as Array<string>, key: [] as Array<string>, result: [] as Array<string>, fingerprint: [] as Array<string | null> }
  const wakeUps = new Map<string, readonly [channel: string, producer: string]>()
  const capacities: Array<string> = []
  for (const m of members) {
    for (const e of m.events) {
      EVENT_COLUMNS.forEach(([name], i) => {
        const v = e[name] ?? null
        events[i]!.push(JSON_COLUMNS.has(name) && v !== null ? JSON.stringify(v) : v)
      })
    }
    for (const r of m.routes) {
      routes.event_id.push(r.event_id)
      routes.stream.push(r.stream)
      routes.producer.push(m.producer)
    }
    if (m.key !== null) {
      keys.scope.push(m.key.scope)
      keys.key.push(m.key.idempotency_key)
      keys.result.push(JSON.stringify(m.key.result))
      keys.fingerprint.push(m.key.fingerprint)
    }
    if (m.notify !== null) wakeUps.set(`${m.notify}\u0000${m.producer}`, [m.notify, m.producer])
    if (m.capacity !== null) capacities.push(m.capacity)
  }
  const names = EVENT_COLUMNS.map(([name]) => sql.ref(name))
  const parts = [
    sql`e as (insert into events (${sql.join(names)})
      select ${sql.join(names)} from unnest(${sql.join(EVENT_COLUMNS.map(([, type], i) => column(events[i]!, type)))})
        with ordinality as r (${sql.join(names)}, n)
      order by n
      returning position, transaction_id, id, aggregate_type, aggregate_id)`,
    sql`o as (insert into outbox (producer, stream, event_position, aggregate_key)
      select r.producer, r.stream, e.position, e.aggregate_type || '/' || e.aggregate_id
      from unnest(${column(routes.event_id, "uuid")}, ${column(routes.stream, "text")}, ${column(routes.producer, "text")})
        as r (event_id, stream, producer)
        join e on e.id = r.event_id
      order by e.position)`,
    ...(keys.scope.length === 0 ? [] : [sql`k as (insert into command_results (scope, idempotency_key, result, fingerprint)
      select * from unnest(${column(keys.scope, "text")}, ${column(keys.key, "text")}, ${column(keys.result, "jsonb")}, ${column(keys.fingerprint, "text")}))`]),
    ...(wakeUps.size === 0 ? [] : [sql`w as (select count(pg_notify(c, p)) from unnest(${column([...wakeUps.values()].map((w) => w[0]), "text")},
      ${column([...wakeUps.values()].map((w) => w[1]), "text")}) as v (c, p))`]),
    ...projection.map((p, i) => sql`${sql.raw(`p${i}`)} as (${p})`),
    // evaluated in member order, in one select list: a member sees the capacity the ones before it took
    ...(capacities.length === 0 ? [] : [sql`g as (select ${sql.join(capacities.map((c, i) => sql`(${sql.raw(c)}) as ${sql.raw(`c${i}`)}`))})`])
  ]
  // a SELECT runs only if referenced: the final select names the wake-ups and the capacities
  const from = sql.raw(["e", ...(wakeUps.size === 0 ? [] : ["w"]), ...(capacities.length === 0 ? [] : ["g"])].join(", "))
  const statement = sql<{ id: string; position: string; transaction_id: string }>`with ${sql.join(parts)}
    select e.id, e.position::text as position, e.transaction_id::text as transaction_id from ${from}`
  /** Each member's rows, in its events' order. */
  const written = (rows: ReadonlyArray<{ id: string; position: string; transaction_id: string }>) => {
    const byId = new Map(rows.map((r) => [r.id, r]))
    return members.map((m): Written => m.events.map((e) => byId.get(e["id"] as string)!))
  }
  return { statement, written }
}

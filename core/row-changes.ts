// SQL projections as row changes, folded before they are written.
//
// A command may emit several events for one row (spawn then suspend). Written as one
// statement per event inside a single SQL statement, they would not see each other:
// data-modifying CTEs all work on the statement's snapshot, so an INSERT followed by an
// UPDATE of the same row keeps the INSERT's values, and of two UPDATEs one is lost. So a
// projection describes each event as a change to a row, the changes of one row are folded
// in order (later columns win; an insert absorbs the updates after it), and each row is
// written once. The rebuild uses the same fold over a batch of the log, so both agree.
import { type RawBuilder, sql } from "kysely"

/** One event's effect on one row: create it with these columns, or set these columns. */
export interface RowChange {
  readonly table: string
  /** The primary key column and value. */
  readonly key: readonly [column: string, value: string]
  readonly op: "insert" | "update"
  /** Column → SQL value (with its cast), e.g. sql`${at}::timestamptz`. */
  readonly values: Readonly<Record<string, RawBuilder<unknown>>>
}

/** Merges the changes of each row, in order: one change per row, in the order rows were first touched. */
export const foldChanges = (changes: ReadonlyArray<RowChange>): ReadonlyArray<RowChange> => {
  const rows = new Map<string, RowChange>()
  for (const c of changes) {
    const id = `${c.table}\u0000${c.key[1]}`
    const before = rows.get(id)
    // an update after an insert still inserts (the row does not exist yet); an insert after
    // anything replaces it (a row is created once, so this only happens in a rebuild's replay)
    rows.set(id, before === undefined || c.op === "insert" ? c : { ...before, values: { ...before.values, ...c.values } })
  }
  return [...rows.values()]
}

/** The statement of one folded change. */
export const changeSql = (c: RowChange): RawBuilder<unknown> => {
  const columns = Object.keys(c.values)
  if (c.op === "insert") {
    return sql`insert into ${sql.table(c.table)} (${sql.join([sql.ref(c.key[0]), ...columns.map((k) => sql.ref(k))])})
      values (${sql.join([sql`${c.key[1]}`, ...columns.map((k) => c.values[k]!)])})`
  }
  return sql`update ${sql.table(c.table)} set ${sql.join(columns.map((k) => sql`${sql.ref(k)} = ${c.values[k]!}`))}
    where ${sql.ref(c.key[0])} = ${c.key[1]}`
}

/** A table's column types (`format_type`), so that a VALUES list can carry typed values. */
export type ColumnTypes = (table: string) => ReadonlyMap<string, string>

/**
 * Many folded changes (of different rows) as few statements: one multi-row INSERT, or one
 * UPDATE … FROM (VALUES …), per table, kind and column set. In an UPDATE's VALUES list a
 * value is cast to its column's type, as an INSERT would coerce it.
 */
export const changesSql = (changes: ReadonlyArray<RowChange>, types: ColumnTypes): ReadonlyArray<RawBuilder<unknown>> => {
  const sets = new Map<string, Array<RowChange>>()
  for (const c of changes) {
    const id = [c.table, c.op, c.key[0], ...Object.keys(c.values).sort()].join("\u0000")
    const set = sets.get(id)
    if (set === undefined) sets.set(id, [c])
    else set.push(c)
  }
  return [...sets.values()].map((set) => {
    const { table, op, key } = set[0]!
    const columns = Object.keys(set[0]!.values).sort()
    if (op === "insert") {
      return sql`insert into ${sql.table(table)} (${sql.join([sql.ref(key[0]), ...columns.map((k) => sql.ref(k))])})
        values ${sql.join(set.map((c) => sql`(${sql.join([sql`${c.key[1]}`, ...columns.map((k) => c.values[k]!)])})`))}`
    }
    const typeOf = types(table)
    const typed = (column: string, value: RawBuilder<unknown>) => {
      const type = typeOf.get(column)
      if (type === undefined) throw new Error(`no column ${column} in ${table}`)
      return sql`(${value})::${sql.raw(type)}`
    }
    const rows = set.map((c) => sql`(${sql.join([typed(key[0], sql`${c.key[1]}`), ...columns.map((k) => typed(k, c.values[k]!))])})`)
    return sql`update ${sql.table(table)} set ${sql.join(columns.map((k) => sql`${sql.ref(k)} = v.${sql.ref(k)}`))}
      from (values ${sql.join(rows)}) as v (${sql.join([sql.ref(key[0]), ...columns.map((k) => sql.ref(k))])})
      where ${sql.table(table)}.${sql.ref(key[0])} = v.${sql.ref(key[0])}`
  })
}

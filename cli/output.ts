// How commands talk to the operator: rows as aligned columns or as JSON lines, and the
// error type for bad input, which main.ts prints as a message (never a stack trace).

/** Where a command prints its result, one line at a time (stdout in the CLI, an array in tests). */
export type Out = (line: string) => void

/** Bad input from the operator: printed as its message on stderr, exit code 1. */
export class UsageError extends Error {
  readonly _tag = "UsageError"
}

export interface Column<R> {
  readonly header: string
  readonly value: (row: R) => unknown
}

export const cell = (v: unknown): string => {
  if (v === null || v === undefined) return "-"
  if (v instanceof Date) return v.toISOString()
  if (typeof v === "object") return JSON.stringify(v)
  return String(v)
}

/**
 * A table that can be printed in several batches (for --follow): column widths only
 * grow, so later rows stay aligned with earlier ones as far as their values allow.
 */
export const makeTable = <R>(columns: ReadonlyArray<Column<R>>) => {
  const widths = columns.map((c) => c.header.length)
  let headerShown = false
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd()
  return (rows: ReadonlyArray<R>): Array<string> => {
    const cells = rows.map((r) => columns.map((c) => cell(c.value(r))))
    for (const row of cells) row.forEach((v, i) => (widths[i] = Math.max(widths[i]!, v.length)))
    const lines: Array<string> = []
    if (!headerShown && cells.length > 0) {
      lines.push(line(columns.map((c) => c.header)))
      headerShown = true
    }
    for (const row of cells) lines.push(line(row))
    return lines
  }
}

export interface PrintOptions<R> {
  readonly json: boolean
  readonly columns: ReadonlyArray<Column<R>>
  readonly toJson: (row: R) => unknown
  /** Printed instead of an empty table (human output only: JSON output is then empty). */
  readonly empty: string
}

export const printRows = <R>(out: Out, rows: ReadonlyArray<R>, opts: PrintOptions<R>) => {
  if (opts.json) {
    for (const r of rows) out(JSON.stringify(opts.toJson(r)))
    return
  }
  if (rows.length === 0) {
    out(opts.empty)
    return
  }
  for (const l of makeTable(opts.columns)(rows)) out(l)
}

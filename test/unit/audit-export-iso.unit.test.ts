// The export writes instants as text itself (Postgres sends their 8 bytes): the text must be
// what to_char(… 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') and Date#toISOString give, over years 0001–9999.
import { describe, expect, it } from "vitest"
import { writeIso } from "../../services/audit/export.ts"

const iso = (ms: number) => {
  const b = Buffer.alloc(24)
  writeIso(b, 0, ms)
  return b.toString("latin1")
}

describe("audit export instants", () => {
  it("formats the edges of the range, leap days and times before 1970 as toISOString does", () => {
    const edges = ["0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z", "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00.000Z",
      "2000-02-29T12:34:56.789Z", "1900-03-01T00:00:00.001Z", "2400-02-29T23:59:59.000Z", "1582-10-04T01:02:03.004Z"]
    for (const e of edges) expect(iso(new Date(e).getTime())).toBe(e)
  })
  it("agrees with toISOString on random instants", () => {
    const lo = new Date("0001-01-01T00:00:00.000Z").getTime()
    const hi = new Date("9999-12-31T23:59:59.999Z").getTime()
    for (let i = 0; i < 20_000; i++) {
      const ms = lo + Math.floor(Math.random() * (hi - lo))
      expect(iso(ms)).toBe(new Date(ms).toISOString())
    }
  })
})

// `COPY (…) TO STDOUT (FORMAT binary)` on a pooled pg client: the rows' values as raw bytes,
// with none of the text protocol's hex or base64 on either side (a bulk read of bytea is
// mostly encoding and decoding otherwise). pg runs it as a submittable: the client hands
// the backend's messages for the active query to these handlers.
import type pg from "pg"

const SIGNATURE = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1")

/** Runs one COPY … TO STDOUT (FORMAT binary) and returns its stream, whole. */
export const copyOut = async (pool: pg.Pool, text: string): Promise<Buffer> => {
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      const parts: Array<Buffer> = []
      let failed: Error | undefined
      let settled = false
      const settle = (e: Error | undefined) => {
        if (settled) return
        settled = true
        if (e) reject(e)
        // one row is one CopyData message: its copy is the stream already
        else resolve(parts.length === 1 ? parts[0]! : Buffer.concat(parts))
      }
      client.query({
        submit: (connection: { query: (text: string) => void }) => connection.query(text),
        // pg hands over a view of its read buffer, which it reuses: copied at once
        handleCopyData: (msg: { chunk: Buffer }) => void parts.push(Buffer.from(msg.chunk)),
        handleCommandComplete: () => {},
        handleRowDescription: () => {},
        handleDataRow: () => {},
        handleEmptyQuery: () => {},
        handlePortalSuspended: () => {},
        handleError: (e: Error) => {
          failed = e
          // an SQL error is followed by ReadyForQuery; a dead socket is not
          if (!(e as { code?: unknown }).code) {
            broken = e
            settle(e)
          }
        },
        handleReadyForQuery: () => settle(failed)
      } as never)
    })
  } finally {
    client.release(broken)
  }
}

/**
 * The tuples of a binary COPY stream, each as its fields (null for SQL NULL); the values are
 * views into `stream`.
 */
export const copyTuples = (stream: Buffer): Array<Array<Buffer | null>> => {
  if (stream.length < 19 || !stream.subarray(0, 11).equals(SIGNATURE)) throw new Error("copy: not a binary COPY stream")
  let at = 11 + 4
  at += 4 + stream.readInt32BE(at)
  const tuples: Array<Array<Buffer | null>> = []
  for (;;) {
    const n = stream.readInt16BE(at)
    at += 2
    if (n === -1) return tuples
    const fields: Array<Buffer | null> = new Array(n)
    for (let i = 0; i < n; i++) {
      const len = stream.readInt32BE(at)
      at += 4
      fields[i] = len < 0 ? null : stream.subarray(at, at + len)
      if (len > 0) at += len
    }
    tuples.push(fields)
  }
}

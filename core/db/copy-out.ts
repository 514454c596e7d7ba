// `COPY (…) TO STDOUT (FORMAT binary)` on a pooled pg client, through pg-copy-streams: the
// rows' values as raw bytes, with none of the text protocol's hex or base64 on either side
// (a bulk read of bytea is mostly encoding and decoding otherwise).
import type pg from "pg"
import { to as copyTo } from "pg-copy-streams"

const SIGNATURE = Buffer.from("PGCOPY\n\xff\r\n\0", "latin1")

/** Runs one COPY … TO STDOUT (FORMAT binary) and returns its stream, whole. */
export const copyOut = async (pool: pg.Pool, text: string): Promise<Buffer> => {
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    const parts: Array<Buffer> = []
    for await (const chunk of client.query(copyTo(text))) parts.push(chunk as Buffer)
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  } catch (e) {
    // an SQL error leaves the connection usable; a broken socket does not go back to the pool
    if (!(e as { code?: unknown }).code) broken = e as Error
    throw e
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

// Verifying an export without the database: the window files, in window order, are one
// stream of records per chain, starting at the first window's anchor for that chain; each
// later window's anchor must continue where the previous window left the chain; the
// checkpoints of every window are checked at their tree sizes (verify.ts).
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3"
import type { KeyObject } from "node:crypto"
import { promises as fs } from "node:fs"
import path from "node:path"
import { publicKeyFromHex } from "./checkpoint.ts"
import { frontierRoot } from "./merkle.ts"
import { fromParquet, type WindowContent } from "./parquet.ts"
import { type VerifyReport, verifyChain } from "./verify.ts"

export interface ExportSource {
  /** Window file names in window order (their keys sort by window start). */
  readonly list: () => Promise<Array<string>>
  readonly read: (name: string) => Promise<Uint8Array>
}

export const dirSource = (dir: string): ExportSource => ({
  list: async () => {
    const out: Array<string> = []
    const walk = async (d: string) => {
      for (const e of await fs.readdir(d, { withFileTypes: true })) {
        const p = path.join(d, e.name)
        if (e.isDirectory()) await walk(p)
        else if (e.name.endsWith(".parquet")) out.push(p)
      }
    }
    await walk(dir)
    return out.sort()
  },
  read: async (name) => new Uint8Array(await fs.readFile(name))
})

export const s3Source = (s3: S3Client, bucket: string, prefix: string): ExportSource => ({
  list: async () => {
    const keys: Array<string> = []
    let token: string | undefined
    do {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }))
      for (const o of page.Contents ?? []) if (o.Key?.endsWith(".parquet")) keys.push(o.Key)
      token = page.NextContinuationToken
    } while (token)
    return keys.sort()
  },
  read: async (key) => {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
    return r.Body!.transformToByteArray()
  }
})

export interface ExportVerifyOptions {
  readonly hmacKey?: KeyObject | undefined
  /** The checkpoint key's public half, hex; when absent, the key the export carries is used (and said so). */
  readonly publicKeyHex?: string | undefined
  readonly zone?: string | undefined
  readonly onProgress?: (done: number, total: number) => void
}

export interface ExportVerifyReport {
  readonly files: number
  readonly chains: ReadonlyArray<VerifyReport & { readonly anchorMismatch?: string }>
  readonly publicKeySource: "pinned" | "from-export" | "none"
}

export const verifyExport = async (source: ExportSource, opts: ExportVerifyOptions): Promise<ExportVerifyReport> => {
  const names = await source.list()
  const windows: Array<WindowContent> = []
  for (const [i, n] of names.entries()) {
    windows.push(fromParquet(await source.read(n)))
    opts.onProgress?.(i + 1, names.length)
  }
  const carried = windows.flatMap((w) => w.checkpoints.map((c) => c.publicKey))[0]
  const publicKeyHex = opts.publicKeyHex ?? carried
  const publicKey = publicKeyHex ? publicKeyFromHex(publicKeyHex) : undefined
  const zones = [...new Set(windows.flatMap((w) => w.records.map((r) => r.zone)))].filter((z) => opts.zone === undefined || z === opts.zone).sort()
  const chains: Array<ExportVerifyReport["chains"][number]> = []
  for (const zone of zones) {
    const anchors = windows.flatMap((w) => w.anchors.filter((a) => a.zone === zone))
    const rows = windows.flatMap((w) => w.records.filter((r) => r.zone === zone))
    const checkpoints = windows.flatMap((w) => w.checkpoints.filter((c) => c.zone === zone))
    const report = await verifyChain({ chain: zone, rows, checkpoints, anchor: anchors[0], hmacKey: opts.hmacKey, publicKey })
    // every later window must start where the files before it left the chain
    let anchorMismatch: string | undefined
    for (const a of anchors.slice(1)) {
      const before = rows.filter((r) => r.seq < a.firstSeq)
      const last = before.at(-1)
      if (last === undefined || last.seq !== a.firstSeq - 1 || !last.mac.equals(a.prevMac)) {
        anchorMismatch = `a window's anchor at record ${a.firstSeq} does not continue the window before it`
        break
      }
    }
    const frontierOk = anchors.every((a) => a.frontier.size === a.firstSeq - 1 && frontierRoot(a.frontier).length === 32)
    chains.push(anchorMismatch || !frontierOk ? { ...report, ok: false, anchorMismatch: anchorMismatch ?? "an anchor's frontier is malformed" } : report)
  }
  return { files: names.length, chains, publicKeySource: opts.publicKeyHex ? "pinned" : publicKey ? "from-export" : "none" }
}

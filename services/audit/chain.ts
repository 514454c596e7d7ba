// The per-zone hash chain: record n's MAC is HMAC-SHA256(AUDIT_HMAC_KEY) over a context
// string, the chain's name, n, record n-1's MAC and record n's canonical bytes. A row
// edited, removed, reordered or moved to another chain breaks the MAC of that row or of
// the next; a cut tail is what the Merkle checkpoints (merkle.ts, checkpoint.ts) catch.
import { createHmac, type KeyObject, timingSafeEqual } from "node:crypto"

const CONTEXT = Buffer.from("caracal-audit-chain-v1\0")
/** The "previous MAC" of a chain's first record. */
export const GENESIS = Buffer.alloc(32)

const u64 = (n: number) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(n))
  return b
}

export const chainMac = (key: KeyObject, chain: string, seq: number, prev: Buffer, canonical: Buffer): Buffer =>
  createHmac("sha256", key).update(CONTEXT).update(chain).update("\0").update(u64(seq)).update(prev).update(canonical).digest()

/** Constant time: a MAC check never stops at the first differing byte. */
export const sameMac = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b)

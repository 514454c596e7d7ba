// The Merkle log of one zone's chain, as RFC 9162 §2.1 defines it: leaf hash
// SHA-256(0x00 || data), interior node SHA-256(0x01 || left || right), the tree over n
// leaves split at the largest power of two below n. A plain hash chain cannot tell a log
// whose tail was cut from a shorter honest one; a signed root over a size can.
//
// Pure functions over leaf hashes. A `Frontier` is the compact form of a tree: the roots
// of its perfect subtrees, largest first (one per set bit of the size). It is all that is
// needed to append and to compute the root, so the ingest keeps it in the chain head and
// retention keeps it for the rows it drops.
import { createHash, hash } from "node:crypto"

export type Hash = Buffer

const LEAF = Buffer.from([0])
const NODE = Buffer.from([1])

// one-shot hashing of the concatenation: faster than a Hash object per call (a million per verification)
export const leafHash = (data: Buffer | string): Hash =>
  hash("sha256", Buffer.concat([LEAF, typeof data === "string" ? Buffer.from(data) : data]), "buffer")
export const nodeHash = (left: Hash, right: Hash): Hash => hash("sha256", Buffer.concat([NODE, left, right]), "buffer")
export const EMPTY_ROOT: Hash = createHash("sha256").digest()

/** Largest power of two strictly below n (n ≥ 2). */
const split = (n: number) => {
  let k = 1
  while (k * 2 < n) k *= 2
  return k
}

/** MTH(D[lo:hi]) over the leaf hashes. */
export const rootOf = (leaves: ReadonlyArray<Hash>, lo = 0, hi = leaves.length): Hash => {
  const n = hi - lo
  if (n === 0) return EMPTY_ROOT
  if (n === 1) return leaves[lo]!
  const k = split(n)
  return nodeHash(rootOf(leaves, lo, lo + k), rootOf(leaves, lo + k, hi))
}

/** RFC 9162 §2.1.3.1 PATH(m, D[n]): the audit path of leaf m in the tree over `size` leaves. */
export const inclusionProof = (leaves: ReadonlyArray<Hash>, index: number, size = leaves.length): Array<Hash> => {
  if (index < 0 || index >= size || size > leaves.length) throw new RangeError(`no leaf ${index} in a tree of ${size}`)
  const path = (m: number, lo: number, hi: number): Array<Hash> => {
    const n = hi - lo
    if (n <= 1) return []
    const k = split(n)
    return m < k
      ? [...path(m, lo, lo + k), rootOf(leaves, lo + k, hi)]
      : [...path(m - k, lo + k, hi), rootOf(leaves, lo, lo + k)]
  }
  return path(index, 0, size)
}

/** RFC 9162 §2.1.3.2: does `proof` place `leaf` at `index` of the tree of `size` with this root? */
export const verifyInclusion = (leaf: Hash, index: number, size: number, proof: ReadonlyArray<Hash>, root: Hash): boolean => {
  if (index < 0 || index >= size) return false
  let fn = index
  let sn = size - 1
  let r = leaf
  for (const p of proof) {
    if (sn === 0) return false
    if ((fn & 1) === 1 || fn === sn) {
      r = nodeHash(p, r)
      while ((fn & 1) === 0 && fn !== 0) {
        fn >>>= 1
        sn >>>= 1
      }
    } else {
      r = nodeHash(r, p)
    }
    fn >>>= 1
    sn >>>= 1
  }
  return sn === 0 && r.equals(root)
}

/** RFC 9162 §2.1.4.1 PROOF(m, D[n]) for 0 < m ≤ n. */
export const consistencyProof = (leaves: ReadonlyArray<Hash>, m: number, n = leaves.length): Array<Hash> => {
  if (m <= 0 || m > n || n > leaves.length) throw new RangeError(`no consistency proof from ${m} to ${n}`)
  const sub = (m: number, lo: number, hi: number, whole: boolean): Array<Hash> => {
    const size = hi - lo
    if (m === size) return whole ? [] : [rootOf(leaves, lo, hi)]
    const k = split(size)
    return m <= k
      ? [...sub(m, lo, lo + k, whole), rootOf(leaves, lo + k, hi)]
      : [...sub(m - k, lo + k, hi, false), rootOf(leaves, lo, lo + k)]
  }
  return sub(m, 0, n, true)
}

/** RFC 9162 §2.1.4.2: is the tree of size `n` with `newRoot` an extension of the one of size `m` with `oldRoot`? */
export const verifyConsistency = (m: number, n: number, oldRoot: Hash, newRoot: Hash, proof: ReadonlyArray<Hash>): boolean => {
  if (m <= 0 || m > n) return false
  if (m === n) return proof.length === 0 && oldRoot.equals(newRoot)
  const path = (m & (m - 1)) === 0 ? [oldRoot, ...proof] : [...proof]
  if (path.length === 0) return false
  let fn = m - 1
  let sn = n - 1
  while ((fn & 1) === 1) {
    fn >>>= 1
    sn >>>= 1
  }
  let fr = path[0]!
  let sr = path[0]!
  for (const c of path.slice(1)) {
    if (sn === 0) return false
    if ((fn & 1) === 1 || fn === sn) {
      fr = nodeHash(c, fr)
      sr = nodeHash(c, sr)
      while ((fn & 1) === 0 && fn !== 0) {
        fn >>>= 1
        sn >>>= 1
      }
    } else {
      sr = nodeHash(sr, c)
    }
    fn >>>= 1
    sn >>>= 1
  }
  return sn === 0 && fr.equals(oldRoot) && sr.equals(newRoot)
}

/** The roots of the perfect subtrees of a tree of `size` leaves, largest first. */
export interface Frontier {
  readonly size: number
  readonly hashes: ReadonlyArray<Hash>
}

export const EMPTY_FRONTIER: Frontier = { size: 0, hashes: [] }

/** Appends leaves; the frontier given is not changed. */
export const append = (f: Frontier, leaves: ReadonlyArray<Hash>): Frontier => {
  const stack = [...f.hashes]
  let size = f.size
  for (const leaf of leaves) {
    stack.push(leaf)
    size++
    // each trailing one bit of the old size is a subtree the new leaf completes
    for (let s = size; (s & 1) === 0; s >>>= 1) {
      const right = stack.pop()!
      const left = stack.pop()!
      stack.push(nodeHash(left, right))
    }
  }
  return { size, hashes: stack }
}

/** MTH of the tree the frontier stands for: folded from the smallest subtree up. */
export const frontierRoot = (f: Frontier): Hash => {
  if (f.size === 0) return EMPTY_ROOT
  let r = f.hashes[f.hashes.length - 1]!
  for (let i = f.hashes.length - 2; i >= 0; i--) r = nodeHash(f.hashes[i]!, r)
  return r
}

/** Stored as the subtree roots concatenated (their sizes follow from the size's bits). */
export const encodeFrontier = (f: Frontier): Buffer => Buffer.concat(f.hashes as Array<Buffer>)

export const decodeFrontier = (size: number, bytes: Buffer | null): Frontier => {
  const hashes: Array<Hash> = []
  const b = bytes ?? Buffer.alloc(0)
  for (let i = 0; i + 32 <= b.length; i += 32) hashes.push(b.subarray(i, i + 32))
  let bits = 0
  for (let s = size; s > 0; s = Math.floor(s / 2)) bits += s % 2
  if (bits !== hashes.length) throw new Error(`frontier of size ${size} needs ${bits} hashes, has ${hashes.length}`)
  return { size, hashes }
}

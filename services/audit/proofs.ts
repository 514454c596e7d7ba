// Proofs served from the stored leaves: that record `seq` is in the tree a checkpoint signed
// (inclusion), and that a later checkpoint's tree extends an earlier one's (consistency).
// A client checks them against checkpoints it verified with the public key alone.
import type { Kysely } from "kysely"
import { consistencyProof, inclusionProof } from "./merkle.ts"
import { leafHashes } from "./store.ts"

export class ProofUnavailable extends Error {}

export interface InclusionProof {
  readonly chain: string
  readonly seq: number
  readonly treeSize: number
  readonly leafHash: string
  readonly path: ReadonlyArray<string>
}

export interface ConsistencyProof {
  readonly chain: string
  readonly from: number
  readonly to: number
  readonly path: ReadonlyArray<string>
}

const leavesOrFail = async (db: Kysely<any>, chain: string, size: number) => {
  const leaves = await leafHashes(db, chain, size)
  if (leaves === undefined) throw new ProofUnavailable(`records 1..${size} of ${chain} are not all stored (retention or a gap)`)
  return leaves
}

export const inclusionProofFor = async (db: Kysely<any>, chain: string, seq: number, treeSize: number): Promise<InclusionProof> => {
  if (seq < 1 || seq > treeSize) throw new ProofUnavailable(`record ${seq} is not in a tree of ${treeSize}`)
  const leaves = await leavesOrFail(db, chain, treeSize)
  return { chain, seq, treeSize, leafHash: leaves[seq - 1]!.toString("hex"), path: inclusionProof(leaves, seq - 1, treeSize).map((h) => h.toString("hex")) }
}

export const consistencyProofFor = async (db: Kysely<any>, chain: string, from: number, to: number): Promise<ConsistencyProof> => {
  if (from < 1 || from > to) throw new ProofUnavailable(`no consistency proof from ${from} to ${to}`)
  const leaves = await leavesOrFail(db, chain, to)
  return { chain, from, to, path: consistencyProof(leaves, from, to).map((h) => h.toString("hex")) }
}

// Signed checkpoints: a zone's tree size and Merkle root at a moment, signed with the
// Ed25519 key AUDIT_CHECKPOINT_KEY. The verifier holds only the public half, so it checks
// a checkpoint without the database (and an export carries both). Stored apart from the
// rows (audit_checkpoints): deleting rows does not delete the evidence of their existence.
import { createHash, createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto"

export interface Checkpoint {
  readonly zone: string
  readonly treeSize: number
  readonly root: Buffer
  readonly signedAt: string
  readonly keyId: string
  readonly signature: Buffer
}

/** The bytes signed: one line per field, so no field can bleed into another. */
export const checkpointMessage = (c: Pick<Checkpoint, "zone" | "treeSize" | "root" | "signedAt">) =>
  Buffer.from(`caracal-audit-checkpoint-v1\n${c.zone}\n${c.treeSize}\n${c.root.toString("hex")}\n${c.signedAt}\n`)

export interface CheckpointSigner {
  readonly keyId: string
  readonly publicKeyHex: string
  readonly sign: (c: Pick<Checkpoint, "zone" | "treeSize" | "root" | "signedAt">) => Checkpoint
}

// PKCS#8 and SPKI headers of a raw Ed25519 key (RFC 8410): node:crypto imports DER, not raw bytes
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex")
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex")

export const publicKeyFromHex = (hex: string): KeyObject => {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error("an Ed25519 public key is 64 hex chars (32 bytes)")
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, Buffer.from(hex, "hex")]), format: "der", type: "spki" })
}

export const keyIdOf = (publicKeyRaw: Buffer) => createHash("sha256").update(publicKeyRaw).digest("hex").slice(0, 16)

/** A signer from the 32-byte Ed25519 seed (AUDIT_CHECKPOINT_KEY, hex). */
export const checkpointSigner = (seed: Buffer): CheckpointSigner => {
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: "der", type: "pkcs8" })
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" })
  const raw = spki.subarray(SPKI_PREFIX.length)
  const keyId = keyIdOf(raw)
  return {
    keyId,
    publicKeyHex: raw.toString("hex"),
    sign: (c) => ({ ...c, keyId, signature: sign(null, checkpointMessage(c), privateKey) })
  }
}

export const verifyCheckpoint = (publicKey: KeyObject, c: Checkpoint): boolean => {
  try {
    return verify(null, checkpointMessage(c), publicKey, c.signature)
  } catch {
    return false
  }
}

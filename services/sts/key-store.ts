// Zone signing keys at rest: generating an ES256 key pair, sealing its private half under
// ZONE_KEK (AES-256-GCM, services/sts/credentials.ts), opening it again, and the SQL that
// reads the key tables. The associated data names the zone and the kid, so a ciphertext
// copied or swapped to another row (another zone, another kid) fails to open instead of
// signing one zone's mandates with another zone's key.
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject } from "node:crypto"
import { promisify } from "node:util"
import { calculateJwkThumbprint, exportJWK } from "jose"
import { type Kysely, sql } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import type { RowChange } from "../../core/row-changes.ts"
import { type Keks, openBytes, type Sealed, sealBytes } from "./credentials.ts"
import type { NewKey, PublicJwk } from "./key-ring.ts"

const generateEcKeyPair = promisify(generateKeyPair)

/** A new key: the public half for the ring's event, the private half (PKCS8 DER) to seal. */
export interface GeneratedKey extends NewKey {
  readonly pkcs8: Buffer
}

/** A fresh P-256 key pair; its kid is the RFC 7638 thumbprint of the public key. */
export const generateZoneKey = async (): Promise<GeneratedKey> => {
  const { privateKey, publicKey } = await generateEcKeyPair("ec", { namedCurve: "P-256" })
  const jwk = await exportJWK(publicKey)
  if (jwk.x === undefined || jwk.y === undefined) throw new Error("exported EC key has no coordinates")
  const kid = await calculateJwkThumbprint({ kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y })
  const publicJwk: PublicJwk = { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y, kid, alg: "ES256", use: "sig" }
  return { kid, publicJwk, pkcs8: privateKey.export({ format: "der", type: "pkcs8" }) }
}

/** ZONE_KEK and the previous KEKs (defined with the sealing, which credentials share). */
export { type Keks, makeKeks } from "./credentials.ts"

const associatedData = (zoneId: string, kid: string) => Buffer.from(`caracal:zone-key:v1\n${zoneId}\n${kid}`, "utf8")

export const sealZoneKey = (kek: Buffer, zoneId: string, kid: string, pkcs8: Buffer): Sealed =>
  sealBytes(kek, associatedData(zoneId, kid), pkcs8)

/**
 * The secret row of a new key, as a row change of the command that creates the key: written
 * in the same statement as the ZoneKeyCreated event (never a key event without its secret,
 * never a secret without its event).
 */
export const secretChange = (kek: Buffer, zoneId: string, key: GeneratedKey): RowChange => {
  const sealed = sealZoneKey(kek, zoneId, key.kid, key.pkcs8)
  return {
    table: "sts_zone_key_secrets",
    key: ["kid", key.kid],
    op: "insert",
    values: {
      zone_id: sql`${zoneId}`,
      kek_id: sql`${sealed.kekId}`,
      nonce: sql`${sealed.nonce}::bytea`,
      ciphertext: sql`${sealed.ciphertext}::bytea`,
      tag: sql`${sealed.tag}::bytea`
    }
  }
}

export interface SecretRow {
  readonly kid: string
  readonly zone_id: string
  readonly kek_id: string
  readonly nonce: Buffer
  readonly ciphertext: Buffer
  readonly tag: Buffer
}

/** Why a sealed key did not open: the log and the error say which, never what the bytes were. */
export type OpenFailure = "unknown_kek" | "unsealable" | "key_mismatch"

export class SecretNotOpened extends Error {
  readonly reason: OpenFailure
  constructor(reason: OpenFailure) {
    super(`sealed zone key cannot be opened: ${reason}`)
    this.reason = reason
  }
}

/** The opened private key, and the DER it came from (for a re-seal; the caller wipes it). */
const openDer = (keks: Keks, row: SecretRow): Buffer => {
  const kek = keks.byId.get(row.kek_id)
  if (kek === undefined) throw new SecretNotOpened("unknown_kek")
  try {
    return openBytes(kek, associatedData(row.zone_id, row.kid), { nonce: row.nonce, ciphertext: row.ciphertext, tag: row.tag, kekId: row.kek_id })
  } catch {
    throw new SecretNotOpened("unsealable")
  }
}

/**
 * Opens a sealed key for signing. With the published key given, the opened key must be its
 * private half: a row that opens yet belongs to another key would sign mandates no JWKS verifies.
 */
export const openSecret = (keks: Keks, row: SecretRow, published?: PublicJwk): KeyObject => {
  const der = openDer(keks, row)
  try {
    const privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" })
    if (published !== undefined) {
      const pub = createPublicKey(privateKey).export({ format: "jwk" })
      if (pub.x !== published.x || pub.y !== published.y) throw new SecretNotOpened("key_mismatch")
    }
    return privateKey
  } finally {
    der.fill(0)
  }
}

/** The same key sealed again under the current KEK (new nonce): for ZONE_KEK_PREVIOUS rows. */
export const resealSecret = (keks: Keks, row: SecretRow): Sealed => {
  const der = openDer(keks, row)
  try {
    return sealZoneKey(keks.current, row.zone_id, row.kid, der)
  } finally {
    der.fill(0)
  }
}

// ---------------------------------------------------------------- reads

export interface KeyRow {
  readonly kid: string
  readonly status: "next" | "active" | "retired"
  readonly public_jwk: PublicJwk
  readonly activates_at: Date
  readonly due_at: Date | null
  /** The sealed private key, joined for the active key only. */
  readonly secret: SecretRow | null
}

/** The zone's published keys (next, active, retired), oldest first; the active key with its secret. */
export const publishedKeys = async (db: Kysely<Tables>, zoneId: string): Promise<ReadonlyArray<KeyRow>> => {
  const { rows } = await sql<Omit<KeyRow, "secret"> & { s_kid: string | null; kek_id: string; nonce: Buffer; ciphertext: Buffer; tag: Buffer }>`
    select k.kid, k.status, k.public_jwk, k.activates_at, k.due_at,
      s.kid as s_kid, s.kek_id, s.nonce, s.ciphertext, s.tag
    from sts_zone_keys k
    left join sts_zone_key_secrets s on s.kid = k.kid and k.status = 'active'
    where k.zone_id = ${zoneId} and k.status <> 'removed'
    order by k.created_at, k.kid`.execute(db)
  return rows.map((r) => ({
    kid: r.kid,
    status: r.status,
    public_jwk: r.public_jwk,
    activates_at: r.activates_at,
    due_at: r.due_at,
    secret: r.s_kid === null
      ? null
      : { kid: r.s_kid, zone_id: zoneId, kek_id: r.kek_id, nonce: r.nonce, ciphertext: r.ciphertext, tag: r.tag }
  }))
}

/** Zones with a key whose activation or removal is due: one range scan of a partial index. */
export const dueZones = async (db: Kysely<Tables>, now: Date, limit: number): Promise<ReadonlyArray<string>> => {
  const { rows } = await sql<{ zone_id: string }>`
    select distinct zone_id from sts_zone_keys where due_at <= ${now}::timestamptz limit ${limit}`.execute(db)
  return rows.map((r) => r.zone_id)
}

/** What the log says of a zone the api made: read-your-writes for a zone no consumer has seen yet. */
export const zoneInLog = async (db: Kysely<Tables>, zoneId: string): Promise<"active" | "archived" | "unknown"> => {
  const { rows } = await sql<{ created: boolean | null; archived: boolean | null }>`
    select bool_or(type = 'ZoneCreated') as created, bool_or(type = 'ZoneArchived') as archived
    from events where aggregate_type = 'zone' and aggregate_id = ${zoneId}`.execute(db)
  const r = rows[0]
  if (r?.created !== true) return "unknown"
  return r.archived === true ? "archived" : "active"
}

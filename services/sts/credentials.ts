// Upstream credentials sealed under ZONE_KEK. The api hands the material over once (an
// internal call); the sts seals it with AES-256-GCM under a random 96-bit nonce and keeps
// only the ciphertext. The associated data names the zone and the credential id, so a
// ciphertext copied to another row, or a row moved to another zone, fails to open instead of
// serving one zone's secret to another. The material never appears in a response or a log:
// validation messages describe its shape, never its content.
import { Effect, Schema } from "effect"
import { sql } from "kysely"
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import type { DatabaseShape, DbError } from "../../core/db/database.ts"
import { type HttpError, httpError } from "../../core/http/errors.ts"

/** A secret string (an API key), or named secret strings (e.g. {username, password}). */
export type Material = string | Readonly<Record<string, string>>

export const MATERIAL_MAX_BYTES = 16 * 1024
const ALGORITHM = "aes-256-gcm"
const NONCE_BYTES = 12
const TAG_BYTES = 16

/** Names the KEK a row was sealed under (the first 16 hex of its sha256), so a rotated KEK is recognised. */
export const kekIdOf = (kek: Buffer): string => createHash("sha256").update(kek).digest("hex").slice(0, 16)

const associatedData = (zoneId: string, id: string) => Buffer.from(`caracal:credential:v1\n${zoneId}\n${id}`, "utf8")

export interface Sealed {
  readonly nonce: Buffer
  readonly ciphertext: Buffer
  readonly tag: Buffer
  readonly kekId: string
}

/**
 * AES-256-GCM under `kek` with a random 96-bit nonce; `aad` (what the ciphertext belongs to)
 * is authenticated, not stored. Shared by credentials and zone signing keys (keys.ts).
 */
export const sealBytes = (kek: Buffer, aad: Buffer, plaintext: Buffer): Sealed => {
  const nonce = randomBytes(NONCE_BYTES)
  const cipher = createCipheriv(ALGORITHM, kek, nonce, { authTagLength: TAG_BYTES })
  cipher.setAAD(aad)
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return { nonce, ciphertext, tag: cipher.getAuthTag(), kekId: kekIdOf(kek) }
}

/** Throws when the KEK, the associated data or any byte of the sealed data differs from sealing. */
export const openBytes = (kek: Buffer, aad: Buffer, sealed: Sealed): Buffer => {
  const decipher = createDecipheriv(ALGORITHM, kek, sealed.nonce, { authTagLength: TAG_BYTES })
  decipher.setAAD(aad)
  decipher.setAuthTag(sealed.tag)
  return Buffer.concat([decipher.update(sealed.ciphertext), decipher.final()])
}

export const sealMaterial = (kek: Buffer, zoneId: string, id: string, material: Material): Sealed => {
  const plaintext = Buffer.from(JSON.stringify(material), "utf8")
  try {
    return sealBytes(kek, associatedData(zoneId, id), plaintext)
  } finally {
    plaintext.fill(0)
  }
}

/** Throws when the KEK, the zone, the id or any byte of the sealed data differs from sealing. */
export const unsealMaterial = (kek: Buffer, zoneId: string, id: string, sealed: Sealed): Material => {
  const plaintext = openBytes(kek, associatedData(zoneId, id), sealed)
  try {
    return JSON.parse(plaintext.toString("utf8")) as Material
  } finally {
    plaintext.fill(0)
  }
}

/** Why a credential cannot be served; the reason is for the log and the caller's status. */
export class CredentialUnavailable extends Schema.TaggedError<CredentialUnavailable>()("CredentialUnavailable", {
  id: Schema.String,
  reason: Schema.Literals(["not_found", "revoked", "unsealable"])
}) {}

export interface OpenedCredential {
  readonly id: string
  readonly zoneId: string
  readonly providerId: string
  readonly material: Material
}

interface CredentialRow {
  readonly id: string
  readonly zone_id: string
  readonly provider_id: string
  readonly nonce: Buffer
  readonly ciphertext: Buffer
  readonly tag: Buffer
  readonly kek_id: string
  readonly revoked_at: Date | null
}

/** Reads and opens a credential (for its release to the gateway). */
export const openCredential = (
  database: DatabaseShape,
  kek: Buffer,
  id: string
): Effect.Effect<OpenedCredential, CredentialUnavailable | DbError> =>
  Effect.gen(function*() {
    const rows = yield* database.query((db) =>
      sql<CredentialRow>`
        select id, zone_id, provider_id, nonce, ciphertext, tag, kek_id, revoked_at
        from sts_credentials where id = ${id}`.execute(db)
    )
    const row = rows.rows[0]
    if (row === undefined) return yield* new CredentialUnavailable({ id, reason: "not_found" })
    if (row.revoked_at !== null) return yield* new CredentialUnavailable({ id, reason: "revoked" })
    // sealed under another KEK (rotated without re-sealing) or altered: never served
    if (row.kek_id !== kekIdOf(kek)) return yield* new CredentialUnavailable({ id, reason: "unsealable" })
    const material = yield* Effect.try({
      try: () => unsealMaterial(kek, row.zone_id, row.id, { nonce: row.nonce, ciphertext: row.ciphertext, tag: row.tag, kekId: row.kek_id }),
      catch: () => new CredentialUnavailable({ id, reason: "unsealable" })
    })
    return { id: row.id, zoneId: row.zone_id, providerId: row.provider_id, material }
  })

// ---- POST /internal/v1/credentials -----------------------------------------------------

const Ident = Schema.String.pipe(Schema.check(Schema.isPattern(/^[A-Za-z0-9._:-]{1,128}$/u)))

/** Everything but the material, which is checked by hand so that no message can echo it. */
export const CreateCredentialBody = Schema.Struct({
  zone_id: Ident,
  provider_id: Ident,
  material: Schema.Unknown
})

const invalidMaterial = (why: string) => httpError(400, "invalid_request", `material ${why}`)

/** A non-empty string, or an object of string values, of at most 16 KiB (UTF-8, as JSON for an object). */
export const checkMaterial = (material: unknown): Effect.Effect<Material, HttpError> => {
  if (typeof material === "string") {
    if (material.length === 0) return Effect.fail(invalidMaterial("must not be empty"))
    if (Buffer.byteLength(material, "utf8") > MATERIAL_MAX_BYTES) {
      return Effect.fail(invalidMaterial(`must be at most ${MATERIAL_MAX_BYTES} bytes`))
    }
    return Effect.succeed(material)
  }
  if (typeof material !== "object" || material === null || Array.isArray(material)) {
    return Effect.fail(invalidMaterial("must be a string or an object of string values"))
  }
  const entries = Object.entries(material)
  if (entries.length === 0) return Effect.fail(invalidMaterial("must not be empty"))
  if (!entries.every(([, v]) => typeof v === "string")) return Effect.fail(invalidMaterial("values must all be strings"))
  if (Buffer.byteLength(JSON.stringify(material), "utf8") > MATERIAL_MAX_BYTES) {
    return Effect.fail(invalidMaterial(`must be at most ${MATERIAL_MAX_BYTES} bytes of JSON`))
  }
  return Effect.succeed(material as Readonly<Record<string, string>>)
}

/** Seals and stores a new credential; answers its id (UUIDv7). */
export const createCredential = (
  database: DatabaseShape,
  kek: Buffer,
  input: { readonly zoneId: string; readonly providerId: string; readonly material: Material }
): Effect.Effect<string, DbError> =>
  Effect.gen(function*() {
    const id = uuidv7()
    const sealed = sealMaterial(kek, input.zoneId, id, input.material)
    yield* database.query((db) =>
      sql`
        insert into sts_credentials (id, zone_id, provider_id, nonce, ciphertext, tag, kek_id)
        values (${id}, ${input.zoneId}, ${input.providerId}, ${sealed.nonce}, ${sealed.ciphertext}, ${sealed.tag}, ${sealed.kekId})`
        .execute(db)
    )
    return id
  })

// Upstream credentials sealed under ZONE_KEK. The api hands the material over once (an
// internal call); the sts seals it with AES-256-GCM under a random 96-bit nonce and keeps
// only the ciphertext. The associated data names the zone and the credential id, so a
// ciphertext copied to another row, or a row moved to another zone, fails to open instead of
// serving one zone's secret to another. The material never appears in a response or a log:
// validation messages describe its shape, never its content.
//
// ZONE_KEK rotation: a row records the id of the KEK that sealed it, so one sealed under a
// key now in ZONE_KEK_PREVIOUS still opens; it is re-sealed under ZONE_KEK when opened and,
// for every row, in the background at start (a compare-and-set on kek_id, so two replicas
// re-sealing the same row both leave a row that opens).
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

/** ZONE_KEK and the previous KEKs, by the id a sealed row records (zone keys and credentials alike). */
export interface Keks {
  readonly current: Buffer
  readonly currentId: string
  readonly byId: ReadonlyMap<string, Buffer>
}

export const makeKeks = (current: Buffer, previous: ReadonlyArray<Buffer>): Keks => {
  const byId = new Map<string, Buffer>()
  for (const k of previous) byId.set(kekIdOf(k), k)
  byId.set(kekIdOf(current), current)
  return { current, currentId: kekIdOf(current), byId }
}

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

/** A stored credential as read, still sealed. */
export interface SealedCredential {
  readonly id: string
  readonly zoneId: string
  readonly providerId: string
  readonly sealed: Sealed
  /** revoked_at is set, or the log holds its CredentialRevoked (read-your-writes: the api's DELETE counts at once). */
  readonly revoked: boolean
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
  readonly revoked_in_log: boolean
}

/**
 * Reads a sealed credential. Its revocation is read from the log in the same statement (the
 * events index on aggregate and sequence), and copied into revoked_at the first time it is seen.
 */
export const readCredential = (database: DatabaseShape, id: string): Effect.Effect<SealedCredential | undefined, DbError> =>
  Effect.gen(function*() {
    const { rows } = yield* database.query((db) =>
      sql<CredentialRow>`
        select c.id, c.zone_id, c.provider_id, c.nonce, c.ciphertext, c.tag, c.kek_id, c.revoked_at,
          exists (select 1 from events e where e.aggregate_type = 'credential' and e.aggregate_id = c.id
            and e.type = 'CredentialRevoked') as revoked_in_log
        from sts_credentials c where c.id = ${id}`.execute(db)
    )
    const row = rows[0]
    if (row === undefined) return undefined
    if (row.revoked_at === null && row.revoked_in_log) {
      yield* database.query((db) => sql`update sts_credentials set revoked_at = now() where id = ${id} and revoked_at is null`.execute(db))
    }
    return {
      id: row.id,
      zoneId: row.zone_id,
      providerId: row.provider_id,
      sealed: { nonce: row.nonce, ciphertext: row.ciphertext, tag: row.tag, kekId: row.kek_id },
      revoked: row.revoked_at !== null || row.revoked_in_log
    }
  })

const keksOf = (keks: Keks | Buffer): Keks => (Buffer.isBuffer(keks) ? makeKeks(keks, []) : keks)

/** The row sealed again under ZONE_KEK, unless another writer changed it first (compare-and-set on kek_id). */
const resealRow = (database: DatabaseShape, keks: Keks, c: SealedCredential, material: Material) =>
  Effect.gen(function*() {
    const sealed = sealMaterial(keks.current, c.zoneId, c.id, material)
    const r = yield* database.query((db) =>
      sql`update sts_credentials set kek_id = ${sealed.kekId}, nonce = ${sealed.nonce}, ciphertext = ${sealed.ciphertext}, tag = ${sealed.tag}
        where id = ${c.id} and kek_id = ${c.sealed.kekId}`.execute(db)
    )
    return Number(r.numAffectedRows ?? 0n)
  })

/**
 * Opens a sealed credential with the KEK that sealed it (ZONE_KEK or one of ZONE_KEK_PREVIOUS);
 * one sealed under a previous KEK is re-sealed under ZONE_KEK (a failed re-seal is logged, and
 * the material is still answered: the background re-seal tries again at the next start).
 */
export const openSealed = (database: DatabaseShape, keks: Keks, c: SealedCredential): Effect.Effect<Material, CredentialUnavailable> =>
  Effect.gen(function*() {
    const kek = keks.byId.get(c.sealed.kekId)
    // sealed under a KEK this sts does not hold (dropped from ZONE_KEK_PREVIOUS too soon), or altered: never served
    if (kek === undefined) return yield* new CredentialUnavailable({ id: c.id, reason: "unsealable" })
    const material = yield* Effect.try({
      try: () => unsealMaterial(kek, c.zoneId, c.id, c.sealed),
      catch: () => new CredentialUnavailable({ id: c.id, reason: "unsealable" })
    })
    if (c.sealed.kekId !== keks.currentId) {
      yield* resealRow(database, keks, c, material).pipe(
        Effect.catchCause((cause) =>
          Effect.logWarning("credential re-seal failed").pipe(Effect.annotateLogs({ credential_id: c.id, cause: String(cause) }))
        )
      )
    }
    return material
  })

/** Reads and opens a credential: with `keks` (or one KEK), ZONE_KEK and the previous KEKs. */
export const openCredential = (
  database: DatabaseShape,
  keks: Keks | Buffer,
  id: string
): Effect.Effect<OpenedCredential, CredentialUnavailable | DbError> =>
  Effect.gen(function*() {
    const c = yield* readCredential(database, id)
    if (c === undefined) return yield* new CredentialUnavailable({ id, reason: "not_found" })
    if (c.revoked) return yield* new CredentialUnavailable({ id, reason: "revoked" })
    const material = yield* openSealed(database, keksOf(keks), c)
    return { id: c.id, zoneId: c.zoneId, providerId: c.providerId, material }
  })

/**
 * Re-seals every credential of a previous KEK under ZONE_KEK (at start, in the background);
 * answers how many moved and how many would not open (those stay as they are, and are refused).
 */
export const resealCredentials = (database: DatabaseShape, keks: Keks): Effect.Effect<{ readonly resealed: number; readonly failed: number }, DbError> =>
  Effect.gen(function*() {
    let resealed = 0
    let failed = 0
    for (const oldId of [...keks.byId.keys()].filter((k) => k !== keks.currentId)) {
      let after = ""
      for (;;) {
        const { rows } = yield* database.query((db) =>
          sql<{ id: string; zone_id: string; provider_id: string; nonce: Buffer; ciphertext: Buffer; tag: Buffer }>`
            select id, zone_id, provider_id, nonce, ciphertext, tag from sts_credentials
            where kek_id = ${oldId} and id > ${after} order by id limit 100`.execute(db)
        )
        if (rows.length === 0) break
        for (const row of rows) {
          after = row.id
          const c: SealedCredential = {
            id: row.id,
            zoneId: row.zone_id,
            providerId: row.provider_id,
            sealed: { nonce: row.nonce, ciphertext: row.ciphertext, tag: row.tag, kekId: oldId },
            revoked: false
          }
          let material: Material
          try {
            material = unsealMaterial(keks.byId.get(oldId)!, c.zoneId, c.id, c.sealed)
          } catch {
            failed++
            continue
          }
          resealed += yield* resealRow(database, keks, c, material)
        }
      }
    }
    return { resealed, failed }
  })

/** How many credentials are sealed under a KEK that is neither ZONE_KEK nor in ZONE_KEK_PREVIOUS. */
export const credentialsUnderUnknownKeks = (database: DatabaseShape, keks: Keks): Effect.Effect<number, DbError> =>
  Effect.map(
    database.query((db) =>
      sql<{ n: number }>`select count(*)::int as n from sts_credentials
        where revoked_at is null and not (kek_id = any(${[...keks.byId.keys()]}::text[]))`.execute(db)
    ),
    (r) => r.rows[0]?.n ?? 0
  )

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

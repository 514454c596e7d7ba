// ZONE_KEK at start and after a KEK rotation.
//
// A wrong ZONE_KEK must stop the sts: running on would either fail every mandate of every
// zone or — worse — tempt an operator to let it mint new keys, silently invalidating every
// mandate in flight and every verifier's cached JWKS. So at start, for each KEK that sealed
// keys (rows record its id), the newest few rows of it must open with ZONE_KEK or one of
// ZONE_KEK_PREVIOUS; otherwise the service refuses to start with a message naming ZONE_KEK.
// One row that does not open while its siblings do is damage to that row (it fails when
// used), not a wrong KEK, so a sample is tried rather than a single row.
//
// Rows sealed under a previous KEK are re-sealed under ZONE_KEK in the background (a
// compare-and-set on kek_id, so two replicas re-sealing at once both leave a valid row).
import { Effect, Redacted } from "effect"
import { type Kysely, sql } from "kysely"
import type { Tables } from "../../core/db/tables.ts"
import { ConfigInvalid } from "../../core/config/load.ts"
import { DbError } from "../../core/db/database.ts"
import { type Keks, makeKeks, openSecret, resealSecret, type SecretRow } from "./key-store.ts"

const SAMPLE = 8

/** ZONE_KEK and ZONE_KEK_PREVIOUS as Keks: what the zone keys and the credentials open with. */
export const keksFrom = (vars: {
  readonly ZONE_KEK: Redacted.Redacted<Buffer>
  readonly ZONE_KEK_PREVIOUS: Redacted.Redacted<ReadonlyArray<Buffer>> | undefined
}): Effect.Effect<Keks, ConfigInvalid> => {
  const previous = vars.ZONE_KEK_PREVIOUS === undefined ? [] : Redacted.value(vars.ZONE_KEK_PREVIOUS)
  if (previous.some((k) => k.length !== 32)) {
    return Effect.fail(new ConfigInvalid({ variable: "ZONE_KEK_PREVIOUS", rule: "each key must be 64 hex chars (32 bytes, AES-256)" }))
  }
  return Effect.succeed(makeKeks(Redacted.value(vars.ZONE_KEK), previous))
}

const query = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new DbError({ cause }) })

/** Fails with ConfigInvalid(ZONE_KEK) unless every KEK that sealed zone keys is at hand and opens them. */
export const checkKeks = (db: Kysely<Tables>, keks: Keks): Effect.Effect<{ readonly sealedUnderPrevious: boolean }, ConfigInvalid | DbError> =>
  Effect.gen(function*() {
    const ids = yield* query(async () =>
      (await sql<{ kek_id: string }>`select distinct kek_id from sts_zone_key_secrets`.execute(db)).rows.map((r) => r.kek_id)
    )
    for (const id of ids) {
      if (!keks.byId.has(id)) {
        return yield* new ConfigInvalid({
          variable: "ZONE_KEK",
          rule: `zone signing keys are sealed under a KEK (id ${id}) that is neither ZONE_KEK nor any of ZONE_KEK_PREVIOUS; ` +
            "set ZONE_KEK to the key that sealed them (or list it in ZONE_KEK_PREVIOUS) — the sts does not replace zone keys it cannot open"
        })
      }
      const sample = yield* query(async () =>
        (await sql<SecretRow>`select kid, zone_id, kek_id, nonce, ciphertext, tag from sts_zone_key_secrets
          where kek_id = ${id} order by created_at desc limit ${SAMPLE}`.execute(db)).rows
      )
      const opens = sample.some((row) => {
        try {
          openSecret(keks, row)
          return true
        } catch {
          return false
        }
      })
      if (!opens) {
        return yield* new ConfigInvalid({
          variable: "ZONE_KEK",
          rule: `the ${id === keks.currentId ? "ZONE_KEK" : "ZONE_KEK_PREVIOUS key"} with id ${id} opens none of the zone signing keys ` +
            "sealed under it (altered rows, or another key with a colliding id); refusing to start"
        })
      }
    }
    return { sealedUnderPrevious: ids.some((id) => id !== keks.currentId) }
  })

/** Re-seals every row of a previous KEK under ZONE_KEK; answers how many moved and how many would not open. */
export const resealUnderCurrent = (db: Kysely<Tables>, keks: Keks): Effect.Effect<{ readonly resealed: number; readonly failed: number }, DbError> =>
  query(async () => {
    let resealed = 0
    let failed = 0
    for (const oldId of [...keks.byId.keys()].filter((id) => id !== keks.currentId)) {
      let after = ""
      for (;;) {
        const { rows } = await sql<SecretRow>`select kid, zone_id, kek_id, nonce, ciphertext, tag from sts_zone_key_secrets
          where kek_id = ${oldId} and kid > ${after} order by kid limit 100`.execute(db)
        if (rows.length === 0) break
        for (const row of rows) {
          after = row.kid
          let sealed
          try {
            sealed = resealSecret(keks, row)
          } catch {
            failed++
            continue
          }
          const r = await sql`update sts_zone_key_secrets
            set kek_id = ${sealed.kekId}, nonce = ${sealed.nonce}, ciphertext = ${sealed.ciphertext}, tag = ${sealed.tag}
            where kid = ${row.kid} and kek_id = ${oldId}`.execute(db)
          resealed += Number(r.numAffectedRows ?? 0n)
        }
      }
    }
    return { resealed, failed }
  })

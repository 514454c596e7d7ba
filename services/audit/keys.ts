// The audit's keys from its configuration: the chain's HMAC key and the checkpoint signer.
// Production refuses to start without AUDIT_CHECKPOINT_KEY (a checkpoint signed by a key
// derived from the HMAC key would let anyone holding that key forge checkpoints too);
// development derives one, stable across restarts, so `npm start` needs no extra secret.
import { Effect, Redacted } from "effect"
import { createSecretKey, hkdfSync, type KeyObject } from "node:crypto"
import { ConfigInvalid, type Mode } from "../../core/config/load.ts"
import { type CheckpointSigner, checkpointSigner } from "./checkpoint.ts"

export interface AuditKeys {
  readonly hmacKey: KeyObject
  readonly signer: CheckpointSigner
}

export const auditKeys = (
  vars: { readonly AUDIT_HMAC_KEY: Redacted.Redacted<Buffer>; readonly AUDIT_CHECKPOINT_KEY: Redacted.Redacted<Buffer> | undefined },
  mode: Mode
): Effect.Effect<AuditKeys, ConfigInvalid> =>
  Effect.gen(function*() {
    const hmac = Redacted.value(vars.AUDIT_HMAC_KEY)
    if (vars.AUDIT_CHECKPOINT_KEY === undefined && mode === "production") {
      return yield* new ConfigInvalid({ variable: "AUDIT_CHECKPOINT_KEY", rule: "is required in production (the Ed25519 seed that signs checkpoints)" })
    }
    const seed = vars.AUDIT_CHECKPOINT_KEY === undefined
      ? Buffer.from(hkdfSync("sha256", hmac, Buffer.alloc(0), "caracal-audit-dev-checkpoint-key", 32))
      : Redacted.value(vars.AUDIT_CHECKPOINT_KEY)
    return { hmacKey: createSecretKey(hmac), signer: checkpointSigner(seed) }
  })

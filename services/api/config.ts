// The api's variables (README configuration table: npm run docs:config).
import { common, httpUrl, port, producerVars, serviceHmacVars } from "../../core/config/common.ts"
import { optional, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const apiSpec = {
  ...common,
  ADMIN_TOKEN: required(p.secretString, "Bearer token required for all /v1/* admin routes (at least 16 characters)", true),
  STS_URL: required(httpUrl, "Internal URL of the STS service (e.g. http://sts:8080)"),
  INSECURE_STS: withDefault(p.bool, "false", "Skip TLS verification when calling STS; internal networks with self-signed certs only"),
  ...serviceHmacVars,
  ...producerVars({ pollMs: "250", batchSize: "32", maxAttempts: "100" }),
  AUDIT_HMAC_KEY: optional(p.hexKey(), "The audit chain's key (the audit service's): /v1/zones/{z}/audit/verify checks MACs only with it", true),
  AUDIT_CHECKPOINT_PUBLIC_KEY: optional(p.hexKey(32),
    "Hex Ed25519 public key of the audit checkpoints (the audit service logs it at start): /audit/verify checks signatures only with it"),
  PORT: port("3000")
} satisfies Spec

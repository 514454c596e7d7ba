// The sts's variables (README configuration table: npm run docs:config).
import { common, httpUrl, port, previousKeys, producerVars, redisUrl, serviceHmacVars, tls } from "../../core/config/common.ts"
import { defaultFrom, optional, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const stsSpec = {
  ...common,
  ...tls,
  ZONE_KEK: required(p.hexKey(32), "32-byte hex-encoded Key Encryption Key for zone signing keys; must not be all zeros", true),
  ZONE_KEK_PREVIOUS: optional(p.hexKeyList,
    "Comma-separated previous ZONE_KEKs: what they sealed still opens, and is re-sealed under ZONE_KEK", true),
  OPA_URL: required(httpUrl, "OPA REST API base URL (e.g. http://opa:8181)"),
  OPA_TIMEOUT_MS: withDefault(p.int(50, 60_000), "2000", "How long a policy decision may take; past it the exchange fails with 503 (never allow)"),
  AUDIT_STREAM_URL: defaultFrom(redisUrl, "REDIS_URL", "Redis URL for audit event publishing, if separate from main Redis"),
  ISSUER_URL: optional(httpUrl,
    "The `iss` of every mandate (the coordinator and gateway pin it); required in production, in development http://127.0.0.1:<PORT>"),
  ...serviceHmacVars,
  // the sts publishes key events: its producer's outbox (CONTRACTS.md)
  ...producerVars({ pollMs: "250", batchSize: "32", maxAttempts: "100" }),
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  JWKS_MAX_AGE_S: withDefault(p.int(0, 86_400), "300", "Cache-Control max-age of the JWKS; a new key is published at least this long before it signs"),
  ZONE_KEY_NEXT_LEAD_S: withDefault(p.int(0, 604_800), "600",
    "Seconds a rotated-in key is published (next) before it signs (active); at least JWKS_MAX_AGE_S"),
  ZONE_KEY_RETIRED_KEEP_S: withDefault(p.int(0, 604_800), "3900",
    "Seconds a retired key stays published: the longest mandate lifetime (3600) plus JWKS_MAX_AGE_S"),
  TOKEN_RATE_PER_MINUTE: withDefault(p.int(1, 10_000_000), "6000", "Mandates per minute per (zone, resource, application); past it 429"),
  CLIENT_AUTH_FAILURES_PER_MINUTE: withDefault(p.int(1, 100_000), "20", "Failed client authentications per minute per (zone, application) before 429"),
  PORT: port("8080")
} satisfies Spec

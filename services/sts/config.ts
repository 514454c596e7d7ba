// The sts's variables (README configuration table: npm run docs:config).
import { common, httpUrl, port, previousKeys, redisUrl, serviceHmacVars, streamsKey, tls } from "../../core/config/common.ts"
import { defaultFrom, parsers as p, required, type Spec } from "../../core/config/vars.ts"

export const stsSpec = {
  ...common,
  ...tls,
  ZONE_KEK: required(p.hexKey(32), "32-byte hex-encoded Key Encryption Key for zone signing keys; must not be all zeros", true),
  OPA_URL: required(httpUrl, "OPA REST API base URL (e.g. http://opa:8181)"),
  AUDIT_STREAM_URL: defaultFrom(redisUrl, "REDIS_URL", "Redis URL for audit event publishing, if separate from main Redis"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  ...serviceHmacVars,
  PORT: port("8080")
} satisfies Spec

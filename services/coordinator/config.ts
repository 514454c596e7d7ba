// The coordinator's variables (README configuration table: npm run docs:config).
import { common, count, httpUrl, port, previousKeys, producerVars } from "../../core/config/common.ts"
import { defaultFrom, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const coordinatorSpec = {
  ...common,
  STS_URL: required(httpUrl, "Internal URL of the STS service, whose per-zone JWKS verifies callers' mandates"),
  ISSUER_URL: defaultFrom(httpUrl, "STS_URL", "The `iss` every accepted mandate must carry (the STS's issuer URL); default STS_URL"),
  JWKS_COOLDOWN_MS: withDefault(p.int(0, 3_600_000), "30000", "Least time between two JWKS fetches for a zone when an unknown key id arrives"),
  ...producerVars({ pollMs: "1000", batchSize: "50", maxAttempts: "10" }),
  MAX_DEPTH: withDefault(p.int(1, 1000), "10", "Maximum agent session nesting depth"),
  MAX_CHILDREN: withDefault(count, "10", "Maximum child sessions per parent"),
  MAX_PER_ZONE: withDefault(count, "50", "Maximum concurrent agent sessions per zone"),
  MAX_PER_APP: withDefault(count, "200", "Maximum concurrent agent sessions per application"),
  DEFAULT_TTL_SECONDS: withDefault(p.int(1, 31_536_000), "3600", "Default agent session TTL in seconds"),
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  PORT: port("4000")
} satisfies Spec

// The gateway's variables (README configuration table: npm run docs:config).
import { common, count, httpUrl, ms, port, previousKeys, streamsKey } from "../../core/config/common.ts"
import { defaultFrom, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const gatewaySpec = {
  ...common,
  STS_URL: required(httpUrl, "Internal URL of the STS service"),
  ISSUER_URL: defaultFrom(httpUrl, "STS_URL", "The `iss` every accepted mandate must carry (the STS's issuer URL); default STS_URL"),
  BINDINGS_RELOAD_MS: withDefault(ms, "30000", "How often (ms) to reload resource bindings from Postgres"),
  JTI_CACHE_SIZE: withDefault(count, "10000", "Maximum entries in the JTI replay cache"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  PORT: port("8081")
} satisfies Spec

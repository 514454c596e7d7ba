// The gateway's variables (README configuration table: npm run docs:config).
import { common, count, httpUrl, ms, port, previousKeys, redisUrl, serviceHmacVars, streamsKey } from "../../core/config/common.ts"
import { defaultFrom, optional, type Parse, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"
import { type Allowlist, parseAllowlist } from "./upstream-guard.ts"

const allowlist: Parse<Allowlist> = (raw) => {
  try {
    return { ok: true, value: parseAllowlist(raw) }
  } catch (e) {
    return { ok: false, rule: `${(e as Error).message} (expected comma-separated CIDRs or host:port entries)` }
  }
}

export const gatewaySpec = {
  ...common,
  STS_URL: required(httpUrl, "Internal URL of the STS service"),
  ISSUER_URL: defaultFrom(httpUrl, "STS_URL", "The `iss` every accepted mandate must carry (the STS's issuer URL); default STS_URL"),
  INSECURE_STS: withDefault(p.bool, "false", "Skip TLS verification when calling STS; internal networks with self-signed certs only"),
  BINDINGS_RELOAD_MS: withDefault(ms, "30000", "How often (ms) to reload resource bindings from Postgres"),
  JTI_CACHE_SIZE: withDefault(count, "10000", "Maximum entries in the JTI replay cache"),
  AUDIT_STREAM_URL: defaultFrom(redisUrl, "REDIS_URL", "Redis URL of the audit stream every governed request is recorded on, if separate from main Redis"),
  ...serviceHmacVars,
  UPSTREAM_ALLOWLIST: optional(allowlist,
    "Comma-separated CIDRs (10.1.0.0/16, ::1/128) or host:port entries (localhost:9000) allowed as upstreams although private, loopback or link-local"),
  MAX_BODY_BYTES: withDefault(p.int(0, 1_073_741_824), "10485760", "Largest request body (bytes) forwarded to an upstream; larger is 413"),
  UPSTREAM_TIMEOUT_MS: withDefault(ms, "30000", "How long (ms) an upstream may take to start its response; past it the caller gets 504 (a response already streaming is not cut)"),
  RATE_LIMIT_PER_MINUTE: withDefault(p.int(1, 100_000_000), "60000", "Governed requests per minute per (zone, resource, application); past it 429 with Retry-After"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  PORT: port("8081")
} satisfies Spec

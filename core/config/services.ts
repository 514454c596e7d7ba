// Every service's variables, defaults and rules, as in the configuration reference.
// The README's configuration table is generated from these definitions (npm run docs:config).
import { defaultFrom, optional, parsers as p, required, type Spec, withDefault } from "./vars.ts"

const postgresUrl = p.secretUrl(["postgres", "postgresql"])
const redisUrl = p.secretUrl(["redis", "rediss"])
const httpUrl = p.url(["http", "https"])
const ms = p.int(1, 86_400_000)
const count = p.int(1, 1_000_000)

/** Variables every service reads. */
export const common = {
  DATABASE_URL: required(postgresUrl, "PostgreSQL connection string (postgres://user:pass@host:port/db)", true),
  REDIS_URL: required(redisUrl, "Redis connection URL (redis://:pass@host:6379); streams use db0, rate limits db1", true),
  REDIS_PASSWORD: optional(p.secretAny, "Alternative to embedding the password in REDIS_URL", true),
  TLS_CERT_FILE: optional(p.path, "Path to TLS certificate PEM for HTTPS; set together with TLS_KEY_FILE"),
  TLS_KEY_FILE: optional(p.path, "Path to TLS private key PEM; set together with TLS_CERT_FILE"),
  INSECURE_HTTP: withDefault(p.bool, "false", "Allow plain HTTP (no TLS) in production mode; unsafe, for local development only"),
  CARACAL_MODE: withDefault(
    p.oneOf(["production", "development"]),
    "production",
    "production: HTTP needs TLS or INSECURE_HTTP=true, Redis must be noeviction; development relaxes both to warnings"
  ),
  LOG_LEVEL: withDefault(p.oneOf(["debug", "info", "warn", "error"]), "info", "Log verbosity: debug, info, warn, error"),
  HOST: withDefault(p.string, "0.0.0.0", "Listening address"),
  REDIS_KEY_PREFIX: withDefault(p.keyPart, "caracal", "Prefix of every Redis key and stream name (deployments or tests sharing one Redis)"),
  MIGRATE_ON_START: withDefault(p.bool, "true", "Apply pending Postgres migrations at start (under a lock)")
} satisfies Spec

const tls = { TLS_CERT_FILE: common.TLS_CERT_FILE, TLS_KEY_FILE: common.TLS_KEY_FILE }

/** Producers sign what their relay publishes; consumers verify with the same key (and rotated-out ones). */
const streamsKey = optional(p.hexKey(), "Hex-encoded key for HMAC-signing stream messages; if unset, messages are unsigned", true)
const previousKeys = optional(
  p.hexKeyList,
  "Comma-separated hex keys still accepted when verifying stream messages (key rotation)",
  true
)
const retention = withDefault(p.int(1, 87_600), "168", "Hours a published stream entry is kept once every group has acknowledged it")

export const sts = {
  ...common,
  ...tls,
  ZONE_KEK: required(p.hexKey(32), "32-byte hex-encoded Key Encryption Key for zone signing keys; must not be all zeros", true),
  OPA_URL: required(httpUrl, "OPA REST API base URL (e.g. http://opa:8181)"),
  AUDIT_STREAM_URL: defaultFrom(redisUrl, "REDIS_URL", "Redis URL for audit event publishing, if separate from main Redis"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  PORT: withDefault(p.int(1, 65535), "8080", "Listening port")
} satisfies Spec

export const api = {
  ...common,
  ADMIN_TOKEN: required(p.secretString, "Bearer token required for all /v1/* admin routes (at least 16 characters)", true),
  STS_URL: required(httpUrl, "Internal URL of the STS service (e.g. http://sts:8080)"),
  INSECURE_STS: withDefault(p.bool, "false", "Skip TLS verification when calling STS; internal networks with self-signed certs only"),
  OUTBOX_POLL_MS: withDefault(ms, "250", "Milliseconds between outbox poll cycles"),
  OUTBOX_BATCH_SIZE: withDefault(p.int(1, 10_000), "32", "Events per outbox poll batch"),
  OUTBOX_MAX_ATTEMPTS: withDefault(count, "100", "Maximum delivery attempts per outbox row before marking dead"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAM_RETENTION_HOURS: retention,
  PORT: withDefault(p.int(1, 65535), "3000", "Listening port")
} satisfies Spec

export const gateway = {
  ...common,
  STS_URL: required(httpUrl, "Internal URL of the STS service"),
  ISSUER_URL: defaultFrom(httpUrl, "STS_URL", "The `iss` every accepted mandate must carry (the STS's issuer URL); default STS_URL"),
  BINDINGS_RELOAD_MS: withDefault(ms, "30000", "How often (ms) to reload resource bindings from Postgres"),
  JTI_CACHE_SIZE: withDefault(count, "10000", "Maximum entries in the JTI replay cache"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  PORT: withDefault(p.int(1, 65535), "8081", "Listening port")
} satisfies Spec

export const coordinator = {
  ...common,
  STS_URL: required(httpUrl, "Internal URL of the STS service, whose per-zone JWKS verifies callers' mandates"),
  ISSUER_URL: defaultFrom(httpUrl, "STS_URL", "The `iss` every accepted mandate must carry (the STS's issuer URL); default STS_URL"),
  JWKS_COOLDOWN_MS: withDefault(p.int(0, 3_600_000), "30000", "Least time between two JWKS fetches for a zone when an unknown key id arrives"),
  OUTBOX_POLL_MS: withDefault(ms, "1000", "Milliseconds between outbox poll cycles"),
  OUTBOX_BATCH_SIZE: withDefault(p.int(1, 10_000), "50", "Events per outbox poll batch"),
  OUTBOX_MAX_ATTEMPTS: withDefault(count, "10", "Maximum delivery attempts per outbox row before marking dead"),
  MAX_DEPTH: withDefault(p.int(1, 1000), "10", "Maximum agent session nesting depth"),
  MAX_CHILDREN: withDefault(count, "10", "Maximum child sessions per parent"),
  MAX_PER_ZONE: withDefault(count, "50", "Maximum concurrent agent sessions per zone"),
  MAX_PER_APP: withDefault(count, "200", "Maximum concurrent agent sessions per application"),
  DEFAULT_TTL_SECONDS: withDefault(p.int(1, 31_536_000), "3600", "Default agent session TTL in seconds"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  STREAM_RETENTION_HOURS: retention,
  PORT: withDefault(p.int(1, 65535), "4000", "Listening port")
} satisfies Spec

export const audit = {
  ...common,
  AUDIT_HMAC_KEY: required(p.hexKey(), "Hex-encoded key for HMAC-SHA256 chain verification", true),
  STREAMS_HMAC_KEY: optional(p.hexKey(), "Hex-encoded key for verifying stream message signatures", true),
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  AUDIT_RETENTION_DAYS: withDefault(p.int(1, 36_500), "365", "Days of audit events to retain; older partitions are dropped"),
  AUDIT_MAX_DELIVERIES: withDefault(p.int(1, 1000), "5", "Maximum delivery attempts per audit event before routing to DLQ"),
  AUDIT_EXPORT_S3_BUCKET: optional(p.string, "S3 bucket for Parquet export; export is disabled if unset"),
  AUDIT_EXPORT_S3_ENDPOINT: optional(httpUrl, "S3-compatible endpoint URL (MinIO, moto…); AWS default if unset"),
  AUDIT_EXPORT_S3_REGION: withDefault(p.string, "us-east-1", "S3 region"),
  AWS_ACCESS_KEY_ID: optional(p.secretAny, "AWS credentials for S3 export; instance profile if unset", true),
  AWS_SECRET_ACCESS_KEY: optional(p.secretAny, "AWS credentials for S3 export", true),
  PORT: withDefault(p.int(1, 65535), "9090", "Listening port")
} satisfies Spec

export const services = { sts, api, gateway, coordinator, audit } as const
export type ServiceName = keyof typeof services

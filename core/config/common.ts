// The variables every service shares, and the building blocks of each service's own spec
// (services/<name>/config.ts). Each service's table in the README is generated from its
// spec (npm run docs:config).
import { optional, parsers as p, required, type Spec, type Var, withDefault } from "./vars.ts"
import type { Redacted } from "effect"

export const postgresUrl = p.secretUrl(["postgres", "postgresql"])
export const redisUrl = p.secretUrl(["redis", "rediss"])
export const httpUrl = p.url(["http", "https"])
export const ms = p.int(1, 86_400_000)
export const count = p.int(1, 1_000_000)

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

export const tls = { TLS_CERT_FILE: common.TLS_CERT_FILE, TLS_KEY_FILE: common.TLS_KEY_FILE }

/** Producers sign what their relay publishes; consumers verify with the same key (and rotated-out ones). */
export const streamsKey = optional(p.hexKey(), "Hex-encoded key for HMAC-signing stream messages; if unset, messages are unsigned", true)
export const previousKeys = optional(
  p.hexKeyList,
  "Comma-separated hex keys still accepted when verifying stream messages (key rotation)",
  true
)

/** Internal calls between services (api → sts, gateway → sts): HMAC-signed requests (CONTRACTS.md). */
export const serviceHmacVars = {
  SERVICE_HMAC_KEY: required(p.hexKey(), "Hex-encoded key that signs and verifies internal calls between services (api → sts, gateway → sts)", true),
  SERVICE_HMAC_PREVIOUS_KEYS: optional(p.hexKeyList, "Comma-separated hex keys still accepted on internal calls (key rotation)", true)
}

export const port = (defaultPort: string) => withDefault(p.int(1, 65535), defaultPort, "Listening port")

/**
 * The variables of a service that produces events, with that service's defaults for the
 * outbox. `Producer.layer` requires a spec that has them: a service that produces without
 * them does not compile.
 */
export const producerVars = (defaults: { readonly pollMs: string; readonly batchSize: string; readonly maxAttempts: string }) => ({
  OUTBOX_POLL_MS: withDefault(ms, defaults.pollMs, "Milliseconds between outbox poll cycles"),
  OUTBOX_BATCH_SIZE: withDefault(p.int(1, 10_000), defaults.batchSize, "Events per outbox poll batch"),
  OUTBOX_MAX_ATTEMPTS: withDefault(count, defaults.maxAttempts, "Maximum delivery attempts per outbox row before marking dead"),
  OUTBOX_LEASE_MS: withDefault(p.int(500, 600_000), "5000",
    "Relay leadership lease: a standby relay takes over at most this long after the leader stops renewing it"),
  STREAMS_HMAC_KEY: streamsKey,
  STREAM_RETENTION_HOURS: withDefault(p.int(1, 87_600), "168", "Hours a published stream entry is kept once every group has acknowledged it"),
  IDEMPOTENCY_RETENTION_HOURS: withDefault(p.int(1, 8_760), "24",
    "Hours an Idempotency-Key returns its first result (some commands free it earlier, e.g. a spawn once its session ended)"),
  WRITE_GROUP_MAX_SIZE: withDefault(p.int(1, 1_000), "32",
    "Commands written together, in one statement (group commit); 1 writes each command on its own"),
  WRITE_GROUP_WINDOW_US: withDefault(p.int(0, 100_000), "200",
    "Microseconds an idle writer waits for more commands before writing a group (a busy one waits one event-loop turn)"),
  WRITE_QUEUE_MAX: withDefault(p.int(1, 1_000_000), "10000", "Commands that may wait for a group; past it a command gets 503 at once"),
  WRITE_DEADLINE_MS: withDefault(p.int(10, 600_000), "5000",
    "Milliseconds a command may wait for its group to be sent; past it, 503 temporarily_unavailable (nothing written)")
})

/** What Producer.layer reads: a spec lacking any of these is refused at compile time. */
export interface ProducerSpec extends Spec {
  readonly DATABASE_URL: Var<Redacted.Redacted<string>>
  readonly OUTBOX_POLL_MS: Var<number>
  readonly OUTBOX_BATCH_SIZE: Var<number>
  readonly OUTBOX_MAX_ATTEMPTS: Var<number>
  readonly OUTBOX_LEASE_MS: Var<number>
  readonly STREAMS_HMAC_KEY: Var<Redacted.Redacted<Buffer> | undefined>
  readonly STREAM_RETENTION_HOURS: Var<number>
  readonly IDEMPOTENCY_RETENTION_HOURS: Var<number>
  readonly WRITE_GROUP_MAX_SIZE: Var<number>
  readonly WRITE_GROUP_WINDOW_US: Var<number>
  readonly WRITE_QUEUE_MAX: Var<number>
  readonly WRITE_DEADLINE_MS: Var<number>
}

/** What Consumer.layer reads to verify entries. */
export interface ConsumerSpec extends Spec {
  readonly STREAMS_HMAC_KEY: Var<Redacted.Redacted<Buffer> | undefined>
  readonly STREAMS_HMAC_PREVIOUS_KEYS: Var<Redacted.Redacted<ReadonlyArray<Buffer>> | undefined>
}

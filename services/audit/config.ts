// The audit's variables (README configuration table: npm run docs:config).
import { common, httpUrl, port, previousKeys, redisUrl } from "../../core/config/common.ts"
import { defaultFrom, optional, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const auditSpec = {
  ...common,
  AUDIT_HMAC_KEY: required(p.hexKey(), "Hex-encoded key for HMAC-SHA256 chain verification", true),
  STREAMS_HMAC_KEY: optional(p.hexKey(), "Hex-encoded key for verifying stream message signatures", true),
  STREAMS_HMAC_PREVIOUS_KEYS: previousKeys,
  AUDIT_STREAM_URL: defaultFrom(redisUrl, "REDIS_URL", "Redis URL of the audit stream (the sts's and gateway's decision records), if separate from REDIS_URL"),
  AUDIT_CHECKPOINT_KEY: optional(p.hexKey(32),
    "Hex-encoded 32-byte Ed25519 seed that signs Merkle checkpoints; required in production (development derives one from AUDIT_HMAC_KEY)", true),
  AUDIT_CHECKPOINT_INTERVAL_S: withDefault(p.int(1, 86_400), "10", "Seconds between signed checkpoints of each chain that grew (also one every 1,000 records)"),
  AUDIT_RETENTION_DAYS: withDefault(p.int(1, 36_500), "365", "Days of audit events to retain; older partitions are dropped"),
  AUDIT_MAX_DELIVERIES: withDefault(p.int(1, 1000), "5", "Maximum delivery attempts per audit event before routing to DLQ"),
  AUDIT_CLAIM_IDLE_MS: withDefault(p.int(100, 3_600_000), "30000",
    "Milliseconds an entry may stay delivered but unacknowledged (a crashed replica's batch) before another replica takes it"),
  AUDIT_READY_MAX_PENDING_S: withDefault(p.int(1, 86_400), "120", "/ready fails while the oldest unacknowledged entry is older than this"),
  AUDIT_EXPORT_S3_BUCKET: optional(p.string, "S3 bucket for Parquet export; export is disabled if unset"),
  AUDIT_EXPORT_S3_ENDPOINT: optional(httpUrl, "S3-compatible endpoint URL (MinIO, moto…); AWS default if unset"),
  AUDIT_EXPORT_S3_REGION: withDefault(p.string, "us-east-1", "S3 region"),
  AUDIT_EXPORT_WINDOW_S: withDefault(p.int(60, 86_400), "3600",
    "Seconds per exported window: one Parquet object per closed window at audit/v1/window=<start ISO>/records.parquet"),
  AWS_ACCESS_KEY_ID: optional(p.secretAny, "AWS credentials for S3 export; instance profile if unset", true),
  AWS_SECRET_ACCESS_KEY: optional(p.secretAny, "AWS credentials for S3 export", true),
  PORT: port("9090")
} satisfies Spec

// The audit's variables (README configuration table: npm run docs:config).
import { common, httpUrl, port, previousKeys } from "../../core/config/common.ts"
import { optional, parsers as p, required, type Spec, withDefault } from "../../core/config/vars.ts"

export const auditSpec = {
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
  PORT: port("9090")
} satisfies Spec

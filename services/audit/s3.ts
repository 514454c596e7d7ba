// The S3 client of the export, from the audit's variables: endpoint (path-style for
// S3-compatible stores such as MinIO or moto), region, and static credentials when set
// (otherwise the SDK's default chain: environment, profile, instance role).
import { S3Client } from "@aws-sdk/client-s3"
import { Redacted } from "effect"

export interface S3Vars {
  readonly AUDIT_EXPORT_S3_ENDPOINT: string | undefined
  readonly AUDIT_EXPORT_S3_REGION: string
  readonly AWS_ACCESS_KEY_ID: Redacted.Redacted<string> | undefined
  readonly AWS_SECRET_ACCESS_KEY: Redacted.Redacted<string> | undefined
}

export const s3Client = (v: S3Vars) =>
  new S3Client({
    region: v.AUDIT_EXPORT_S3_REGION,
    ...(v.AUDIT_EXPORT_S3_ENDPOINT ? { endpoint: v.AUDIT_EXPORT_S3_ENDPOINT, forcePathStyle: true } : {}),
    ...(v.AWS_ACCESS_KEY_ID && v.AWS_SECRET_ACCESS_KEY
      ? { credentials: { accessKeyId: Redacted.value(v.AWS_ACCESS_KEY_ID), secretAccessKey: Redacted.value(v.AWS_SECRET_ACCESS_KEY) } }
      : {}),
    // a failed upload is retried by the next export round, not by the SDK for minutes
    maxAttempts: 2
  })

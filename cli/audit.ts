// `caracal audit verify|timeline|export`: the audit chains as an auditor and a forensic
// engineer use them. verify checks every chain (or one) from the database, or an export
// (a directory or s3://bucket/prefix) without it, and names the first bad record (exit 1);
// timeline renders one request's or one session's story across services; export runs one
// round of the Parquet exporter now. Long runs draw a progress bar on stderr.
import { Effect, Option, Redacted } from "effect"
import { Command, Flag } from "effect/cli"
import { createSecretKey, type KeyObject } from "node:crypto"
import { type Kysely, sql } from "kysely"
import { loadSpec } from "../core/config/load.ts"
import { optional, parsers as p, type Spec, withDefault } from "../core/config/vars.ts"
import { makeKysely } from "../core/db/database.ts"
import { stackEnv } from "../core/stack-env.ts"
import { publicKeyFromHex } from "../services/audit/checkpoint.ts"
import type { Entry } from "../services/audit/entry.ts"
import { runExport } from "../services/audit/export.ts"
import { dirSource, type ExportVerifyReport, s3Source, verifyExport } from "../services/audit/export-verify.ts"
import { redact } from "../services/audit/redact.ts"
import { s3Client } from "../services/audit/s3.ts"
import { type AuditRecordsRow, listChains, verifyStoredChain } from "../services/audit/store.ts"
import type { VerifyReport } from "../services/audit/verify.ts"
import { type Out, UsageError } from "./output.ts"

const auditCliSpec = () => ({
  DATABASE_URL: { parse: p.secretUrl(["postgres", "postgresql"]), required: false, default: stackEnv().DATABASE_URL, secret: true, doc: "PostgreSQL" },
  AUDIT_HMAC_KEY: optional(p.hexKey(), "the chain's HMAC key: without it MACs are not checked", true),
  AUDIT_CHECKPOINT_PUBLIC_KEY: optional(p.string, "hex Ed25519 public key of the checkpoints (pin it: an export's own copy proves nothing)"),
  AUDIT_CHECKPOINT_KEY: optional(p.hexKey(32), "the checkpoint seed (export: its public half goes into the files)", true),
  AUDIT_EXPORT_S3_BUCKET: optional(p.string, "bucket of the export"),
  AUDIT_EXPORT_S3_ENDPOINT: optional(p.url(["http", "https"]), "S3-compatible endpoint"),
  AUDIT_EXPORT_S3_REGION: withDefault(p.string, "us-east-1", "S3 region"),
  AUDIT_EXPORT_WINDOW_S: withDefault(p.int(60, 86_400), "3600", "seconds per window"),
  AWS_ACCESS_KEY_ID: optional(p.secretAny, "S3 credentials", true),
  AWS_SECRET_ACCESS_KEY: optional(p.secretAny, "S3 credentials", true)
}) satisfies Spec

type AuditEnv = Awaited<ReturnType<typeof loadAuditEnv>>
const loadAuditEnv = () =>
  Effect.runPromise(loadSpec(auditCliSpec()).pipe(Effect.mapError((e) => new UsageError(e.message))))

const out: Out = (line) => void process.stdout.write(`${line}\n`)

/** A progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise). */
export const progressBar = (label: string) => {
  let lastTenth = -1
  return (done: number, total?: number) => {
    if (total === undefined || total <= 0) {
      if (process.stderr.isTTY) process.stderr.write(`\r${label} ${done}`)
      return
    }
    const share = Math.min(1, done / total)
    const bar = `${"#".repeat(Math.round(share * 30)).padEnd(30, ".")}`
    if (process.stderr.isTTY) process.stderr.write(`\r${label} [${bar}] ${Math.round(share * 100)}% ${done}/${total}${share === 1 ? "\n" : ""}`)
    else if (Math.floor(share * 10) > lastTenth) {
      lastTenth = Math.floor(share * 10)
      process.stderr.write(`${label} [${bar}] ${Math.round(share * 100)}% ${done}/${total}\n`)
    }
  }
}

const keysOf = (env: AuditEnv) => {
  const hmacKey: KeyObject | undefined = env.AUDIT_HMAC_KEY ? createSecretKey(Redacted.value(env.AUDIT_HMAC_KEY)) : undefined
  let publicKeyHex = env.AUDIT_CHECKPOINT_PUBLIC_KEY
  if (publicKeyHex !== undefined) {
    try {
      publicKeyFromHex(publicKeyHex)
    } catch (e) {
      throw new UsageError(`AUDIT_CHECKPOINT_PUBLIC_KEY: ${(e as Error).message}`)
    }
  }
  return { hmacKey, publicKeyHex }
}

const line = (r: VerifyReport) =>
  r.ok
    ? `${r.chain}: ok, records ${r.firstSeq}..${r.lastSeq}, ${r.checkpointsVerified} checkpoints, root ${r.root.slice(0, 16)}…`
    : `${r.chain}: FAILED at record ${r.firstBad?.seq ?? "?"}${r.firstBad?.id ? ` (id ${r.firstBad.id})` : ""}: ${
      r.firstBad?.reason ?? (r as { anchorMismatch?: string }).anchorMismatch
    }`

export const runVerify = async (o: { zone: string | undefined; fromExport: string | undefined; json: boolean }) => {
  const env = await loadAuditEnv()
  const { hmacKey, publicKeyHex } = keysOf(env)
  const warnings: Array<string> = []
  if (!hmacKey) warnings.push("AUDIT_HMAC_KEY is not set: MACs are not checked (links and Merkle roots are)")
  let reports: ReadonlyArray<VerifyReport>
  if (o.fromExport !== undefined) {
    const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(o.fromExport)
    const source = m ? s3Source(s3Client(env), m[1]!, m[2] ?? "") : dirSource(o.fromExport)
    const report: ExportVerifyReport = await verifyExport(source, { hmacKey, publicKeyHex, zone: o.zone, onProgress: progressBar("reading") })
    if (report.files === 0) throw new UsageError(`no Parquet files under ${o.fromExport}`)
    if (report.publicKeySource === "from-export") warnings.push("checkpoints checked with the public key the export carries; pin it with AUDIT_CHECKPOINT_PUBLIC_KEY")
    reports = report.chains
  } else {
    if (!publicKeyHex) warnings.push("AUDIT_CHECKPOINT_PUBLIC_KEY is not set: checkpoint signatures are not checked")
    const db = makeKysely(Redacted.value(env.DATABASE_URL), 2)
    try {
      const chains = o.zone === undefined ? await listChains(db) : [o.zone]
      const done: Array<VerifyReport> = []
      for (const chain of chains) {
        const bar = progressBar(`verifying ${chain}`)
        done.push(await verifyStoredChain(db, chain, { hmacKey, publicKey: publicKeyHex ? publicKeyFromHex(publicKeyHex) : undefined }, (n) => bar(n)))
      }
      reports = done
    } finally {
      await db.destroy()
    }
  }
  for (const w of warnings) process.stderr.write(`warning: ${w}\n`)
  if (reports.length === 0) throw new UsageError(o.zone ? `no chain ${o.zone}` : "no chains to verify")
  for (const r of reports) out(o.json ? JSON.stringify({ ...r, end: undefined }) : line(r))
  const bad = reports.filter((r) => !r.ok)
  if (bad.length > 0) throw new UsageError(`${bad.length} chain(s) failed verification`)
}

type TimelineRow = Pick<AuditRecordsRow, "zone" | "seq" | "occurred_at" | "source" | "kind" | "decision" | "request_id" | "session_id" | "canonical">

export const timelineRows = async (db: Kysely<any>, by: { request?: string | undefined; session?: string | undefined; zone?: string | undefined }) => {
  const { rows } = await sql<TimelineRow>`
    select zone, seq, occurred_at, source, kind, decision, request_id, session_id, canonical from audit_records
    where ${by.request !== undefined ? sql`request_id = ${by.request}` : sql`session_id = ${by.session!}`}
      ${by.zone !== undefined ? sql`and zone = ${by.zone}` : sql``}
    order by occurred_at, zone, seq limit 10000`.execute(db)
  return rows.map((r) => {
    const entry = JSON.parse(r.canonical.toString("utf8")) as Entry
    const b = redact(entry.body) as Record<string, unknown>
    const detail = ["reason", "client_id", "resource", "scope", "status", "latency_ms", "jti"]
      .filter((k) => b[k] !== null && b[k] !== undefined).map((k) => `${k}=${String(b[k])}`)
    // shown from the chained bytes (the evidence), not from the filter columns
    return {
      at: r.occurred_at.toISOString(), zone: r.zone, seq: Number(r.seq), source: r.source, kind: r.kind,
      decision: typeof b.decision === "string" ? b.decision : null,
      detail: detail.join(" "), body: b
    }
  })
}

export const runTimeline = async (o: { request: string | undefined; session: string | undefined; zone: string | undefined; json: boolean }) => {
  if ((o.request === undefined) === (o.session === undefined)) throw new UsageError("give exactly one of --request ID or --session ID")
  const env = await loadAuditEnv()
  const db = makeKysely(Redacted.value(env.DATABASE_URL), 2)
  try {
    const rows = await timelineRows(db, o)
    if (rows.length === 0) throw new UsageError(`no audit records for ${o.request ? `request ${o.request}` : `session ${o.session}`}`)
    if (o.json) for (const r of rows) out(JSON.stringify(r))
    else {
      const t0 = Date.parse(rows[0]!.at)
      out(`${o.request ? `request ${o.request}` : `session ${o.session}`}: ${rows.length} records`)
      for (const r of rows) {
        const offset = `+${((Date.parse(r.at) - t0) / 1000).toFixed(3)}s`.padStart(10)
        const verdict = r.decision ? ` ${r.decision.toUpperCase()}` : ""
        out(`${r.at} ${offset}  ${r.source.padEnd(11)} ${r.kind}${verdict}${r.detail ? `  ${r.detail}` : ""}  [${r.zone}#${r.seq}]`)
      }
    }
  } finally {
    await db.destroy()
  }
}

export const runExportNow = async (o: { json: boolean }) => {
  const env = await loadAuditEnv()
  if (env.AUDIT_EXPORT_S3_BUCKET === undefined) throw new UsageError("AUDIT_EXPORT_S3_BUCKET is not set: nowhere to export to")
  if (env.AUDIT_CHECKPOINT_KEY === undefined && env.AUDIT_CHECKPOINT_PUBLIC_KEY === undefined) {
    throw new UsageError("set AUDIT_CHECKPOINT_PUBLIC_KEY (or AUDIT_CHECKPOINT_KEY): every export carries the checkpoints' public key")
  }
  const publicKeyHex = env.AUDIT_CHECKPOINT_PUBLIC_KEY
    ?? (await import("../services/audit/checkpoint.ts")).checkpointSigner(Redacted.value(env.AUDIT_CHECKPOINT_KEY!)).publicKeyHex
  const { makeDatabase } = await import("../core/db/database.ts")
  const database = makeDatabase(makeKysely(Redacted.value(env.DATABASE_URL), 2))
  const s3 = s3Client(env)
  try {
    const report = await runExport({
      database, s3, bucket: env.AUDIT_EXPORT_S3_BUCKET, windowS: env.AUDIT_EXPORT_WINDOW_S, signer: { publicKeyHex },
      graceS: 60, holder: `cli-${process.pid}`, onProgress: progressBar("exporting")
    }, new Date())
    if (!report.leader) throw new UsageError("another exporter holds the export lease; try again later")
    for (const w of report.windows) out(o.json ? JSON.stringify(w) : `${w.written ? "wrote" : "kept "} s3://${env.AUDIT_EXPORT_S3_BUCKET}/${w.key} (${w.records} records)`)
    if (report.windows.length === 0 && !o.json) out("nothing to export: no closed window since the watermark")
  } finally {
    s3.destroy()
    await database.db.destroy()
  }
}

// ------------------------------------------------------------------ commands

const json = Flag.Boolean("json").pipe(Flag.withDefault(false), Flag.withDescription("one JSON object per line"))
const optionalString = (name: string, description: string) =>
  Flag.String(name).pipe(Flag.optional, Flag.map(Option.getOrUndefined), Flag.withDescription(description))

export const auditCommand = <E>(attempt: <A>(f: () => Promise<A>) => Effect.Effect<A, E>) => {
  const verify = Command.make("verify", {
    zone: optionalString("zone", "only this chain (a zone id, _unverified or _audit)"),
    fromExport: optionalString("from-export", "verify an export instead of the database: a directory or s3://bucket/prefix"),
    json
  }, (o) => attempt(() => runVerify(o))).pipe(Command.withDescription("check chains, Merkle roots and signed checkpoints; names the first bad record"))
  const timeline = Command.make("timeline", {
    request: optionalString("request", "one request's story (its request id)"),
    session: optionalString("session", "one agent session's story"),
    zone: optionalString("zone", "only this zone"),
    json
  }, (o) => attempt(() => runTimeline(o))).pipe(Command.withDescription("one request's or session's records across sts, gateway, api and coordinator"))
  const exportNow = Command.make("export", { json }, (o) => attempt(() => runExportNow(o))).pipe(
    Command.withDescription("export the closed windows not yet in S3 now (as the audit service does every minute)")
  )
  return Command.make("audit").pipe(Command.withDescription("the audit chains"), Command.withSubcommands([verify, timeline, exportNow]))
}

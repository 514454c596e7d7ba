// `npm start`: runs the five services against the local stack in development mode,
// with development secrets generated once and kept in .dev.env (git-ignored).
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import os from "node:os"
import path from "node:path"
import { repoRoot, stackEnv } from "../core/stack-env.ts"
import { nodeBinary } from "../core/testing/index.ts"
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3"
import { checkpointSigner } from "../services/audit/checkpoint.ts"

const DEV_FILE = path.join(repoRoot, ".dev.env")

const generators: Record<string, () => string> = {
  ZONE_KEK: () => randomBytes(32).toString("hex"),
  STREAMS_HMAC_KEY: () => randomBytes(32).toString("hex"),
  AUDIT_HMAC_KEY: () => randomBytes(32).toString("hex"),
  AUDIT_CHECKPOINT_KEY: () => randomBytes(32).toString("hex"),
  ADMIN_TOKEN: () => randomBytes(24).toString("hex"),
  SERVICE_HMAC_KEY: () => randomBytes(32).toString("hex")
}

// a .dev.env written before a secret existed gets that secret added; the others are kept
const devSecrets = (): Record<string, string> => {
  const kept: Record<string, string> = existsSync(DEV_FILE)
    ? Object.fromEntries(readFileSync(DEV_FILE, "utf8").split("\n").filter((l) => l.includes("=")).map((l) => {
      const i = l.indexOf("=")
      return [l.slice(0, i), l.slice(i + 1)]
    }))
    : {}
  const missing = Object.keys(generators).filter((k) => kept[k] === undefined)
  if (missing.length === 0) return kept
  const secrets = { ...kept, ...Object.fromEntries(missing.map((k) => [k, generators[k]!()])) }
  writeFileSync(DEV_FILE, Object.entries(secrets).map(([k, v]) => `${k}=${v}`).join("\n") + "\n", { mode: 0o600 })
  return secrets
}

// DEV_PORT_OFFSET shifts every port, so a test (or a second checkout) can run the whole set beside another.
const offset = Number(process.env.DEV_PORT_OFFSET ?? "0")
const services = [
  { name: "sts", port: 8080 },
  { name: "api", port: 3000 },
  { name: "gateway", port: 8081 },
  { name: "coordinator", port: 4000 },
  { name: "audit", port: 9090 }
].map((s) => ({ ...s, port: s.port + offset }))

// The demo upstream the demo zone's resource points at: a first governed call needs something
// behind the gateway. On loopback, so the gateway must be told it may call it.
const demoPort = 8090 + offset
const demoUpstream = createServer((req, res) => {
  req.resume()
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify({ upstream: "demo", method: req.method, path: req.url, message: "a governed call reached the demo upstream" }) + "\n")
  })
})
demoUpstream.on("error", (e) => console.error(`demo upstream not started on port ${demoPort}: ${e.message}`))
demoUpstream.listen(demoPort, "127.0.0.1")

const { S3_ENDPOINT, ...stack } = stackEnv()
const secrets = devSecrets()
const shared = {
  ...stack,
  AUDIT_EXPORT_S3_ENDPOINT: S3_ENDPOINT,
  ...secrets,
  CARACAL_MODE: "development",
  HOST: "127.0.0.1",
  STS_URL: `http://127.0.0.1:${8080 + offset}`,
  AUDIT_EXPORT_S3_BUCKET: "caracal-audit",
  // the api verifies checkpoint signatures with the public half (the audit service signs with the seed)
  AUDIT_CHECKPOINT_PUBLIC_KEY: checkpointSigner(Buffer.from(secrets.AUDIT_CHECKPOINT_KEY!, "hex")).publicKeyHex,
  AWS_ACCESS_KEY_ID: "caracal-dev",
  AWS_SECRET_ACCESS_KEY: "caracal-dev",
  LOG_LEVEL: process.env.LOG_LEVEL ?? "info",
  UPSTREAM_ALLOWLIST: [process.env.UPSTREAM_ALLOWLIST, `127.0.0.1:${demoPort}`].filter(Boolean).join(",")
}

// the export's bucket on the local S3 emulator (production buckets are the operator's to create)
{
  const s3 = new S3Client({ region: "us-east-1", endpoint: S3_ENDPOINT, forcePathStyle: true, credentials: { accessKeyId: "caracal-dev", secretAccessKey: "caracal-dev" } })
  await s3.send(new CreateBucketCommand({ Bucket: shared.AUDIT_EXPORT_S3_BUCKET })).catch(() => undefined)
  s3.destroy()
}

const children: Array<ChildProcess> = []
const prefix = (name: string, chunk: Buffer, out: NodeJS.WriteStream) => {
  for (const line of chunk.toString().split("\n")) if (line) out.write(`${name.padEnd(11)} | ${line}\n`)
}

for (const s of services) {
  const child = spawn(nodeBinary(), [path.join(repoRoot, "services", s.name, "main.ts")], {
    env: { ...process.env, ...shared, PORT: String(s.port) },
    stdio: ["ignore", "pipe", "pipe"]
  })
  child.stdout.on("data", (b: Buffer) => prefix(s.name, b, process.stdout))
  child.stderr.on("data", (b: Buffer) => prefix(s.name, b, process.stderr))
  child.on("exit", (code, signal) => {
    process.stderr.write(`${s.name} exited (${code ?? signal})\n`)
    if (!stopping) shutdown(1)
  })
  children.push(child)
}

let stopping = false
const shutdown = (code: number) => {
  if (stopping) return
  stopping = true
  for (const c of children) c.kill("SIGTERM")
  demoUpstream.close()
  setTimeout(() => process.exit(code), 12_000).unref()
  Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once("exit", r))))).then(() => process.exit(code))
}
process.on("SIGINT", () => shutdown(0))
process.on("SIGTERM", () => shutdown(0))

// The demo zone (api: POST /v1/local/bootstrap, idempotent). Its application's secret is
// shown once, by the call that created it: kept in the data directory, never printed.
const DEMO_FILE = path.join(process.env.XDG_DATA_HOME ?? path.join(os.homedir(), ".local", "share"), "caracal", "demo.json")
const bootstrap = async () => {
  const api = services.find((s) => s.name === "api")!
  const res = await fetch(`http://127.0.0.1:${api.port}/v1/local/bootstrap`, {
    method: "POST",
    headers: { authorization: `Bearer ${secrets.ADMIN_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ upstream_url: `http://127.0.0.1:${demoPort}` }),
    signal: AbortSignal.timeout(30_000)
  }).catch((e: unknown) => e as Error)
  if (res instanceof Error) return console.error(`demo zone not created: ${res.message}`)
  const demo = (await res.json()) as { zone_id?: string; application_id?: string; client_secret?: string | null; resource?: string }
  if (res.status !== 200) return console.error(`demo zone not created (${res.status}): ${JSON.stringify(demo)}`)
  const before = existsSync(DEMO_FILE) ? (JSON.parse(readFileSync(DEMO_FILE, "utf8")) as { client_secret?: string }) : {}
  const secret = demo.client_secret ?? before.client_secret ?? null
  mkdirSync(path.dirname(DEMO_FILE), { recursive: true })
  writeFileSync(DEMO_FILE, JSON.stringify({ ...demo, client_secret: secret }, null, 2) + "\n", { mode: 0o600 })
  console.log(`\ndemo zone ${demo.zone_id}: application ${demo.application_id}, resource ${demo.resource} (client secret in ${DEMO_FILE})`)
  // the zone's key and policy reach the sts and OPA asynchronously: the printed commands
  // are offered once the sts really issues the demo resource's mandate
  if (secret === null || !(await demoIssues(demo.zone_id!, demo.application_id!, secret, demo.resource!))) {
    console.error("the demo zone does not issue mandates yet (the sts's policy sync may be slow); try the commands below in a moment")
  }
  return demo.resource
}

const demoIssues = async (zone: string, app: string, secret: string, resource: string) => {
  const sts = `http://127.0.0.1:${services.find((s) => s.name === "sts")!.port}/oauth/2/token`
  const token = async (form: Record<string, string>) => {
    const r = await fetch(sts, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(form) }).catch(() => undefined)
    return r?.status === 200 ? ((await r.json()) as { access_token: string }).access_token : undefined
  }
  const until = Date.now() + 30_000
  while (Date.now() < until) {
    const ambient = await token({ grant_type: "client_credentials", zone_id: zone, application_id: app, client_secret: secret })
    const perCall = ambient && await token({
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: ambient,
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
      resource
    })
    if (perCall) return true
    await new Promise((r) => setTimeout(r, 250))
  }
  return false
}

/**
 * The commands a newcomer runs next: a caracal.toml for the demo zone, then a governed call
 * through the gateway with the mandate `caracal run` injects. Printed with the actual ports
 * (DEV_PORT_OFFSET moves them); the e2e test runs exactly these lines.
 */
const firstCall = (resource: string) => {
  const api = services.find((s) => s.name === "api")!
  const gateway = services.find((s) => s.name === "gateway")!
  const apiEnv = api.port === 3000 ? "" : `CARACAL_API_URL=http://127.0.0.1:${api.port} `
  // the call names its request id, so the audit timeline of exactly this call can be asked for
  const requestId = `first-call-${randomBytes(4).toString("hex")}`
  const call = `fetch('http://127.0.0.1:${gateway.port}/hello', { headers: { authorization: 'Bearer ' + process.env.DEMO_API_TOKEN, 'x-caracal-resource': '${resource}', 'x-request-id': '${requestId}' } })` +
    ".then(async (r) => console.log(r.status, await r.text()))"
  console.log("Make a first governed call (another terminal, in this directory):")
  console.log(`  $ ${apiEnv}npx caracal config init --demo`)
  console.log(`  $ npx caracal run -- node -e "${call}"`)
  console.log("  (caracal run exchanges the demo application's secret for a per-call mandate; the gateway checks it and calls the demo upstream)")
  console.log("See it in the audit trail (the gateway's record, chained and signed by the audit service):")
  console.log(`  $ npx caracal audit timeline --request ${requestId}`)
  console.log("")
}

// Report when every service answers /ready.
const deadline = Date.now() + 60_000
const check = async (): Promise<void> => {
  const states = await Promise.all(services.map(async (s) => {
    const ready = await fetch(`http://127.0.0.1:${s.port}/ready`).then((r) => r.status === 200, () => false)
    return { ...s, ready }
  }))
  if (states.every((s) => s.ready)) {
    const resource = await bootstrap()
    console.log("\nCaracal is up (development mode):")
    for (const s of states) console.log(`  ${s.name.padEnd(11)} http://127.0.0.1:${s.port}  (/health /ready /metrics)`)
    console.log(`  demo upstream http://127.0.0.1:${demoPort}`)
    console.log(`  admin token in ${DEV_FILE}; Ctrl-C stops the services (infra/stack.sh stop stops the stack)\n`)
    if (resource !== undefined) firstCall(resource)
    return
  }
  if (Date.now() > deadline) {
    console.error("services not ready after 60 s:", states.filter((s) => !s.ready).map((s) => s.name).join(", "))
    return shutdown(1)
  }
  await new Promise((r) => setTimeout(r, 250))
  return check()
}
void check()

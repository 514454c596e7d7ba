// `npm start`: runs the five services against the local stack in development mode,
// with development secrets generated once and kept in .dev.env (git-ignored).
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { repoRoot, stackEnv } from "../core/stack-env.ts"
import { nodeBinary } from "../core/testing/index.ts"

const DEV_FILE = path.join(repoRoot, ".dev.env")

const generators: Record<string, () => string> = {
  ZONE_KEK: () => randomBytes(32).toString("hex"),
  STREAMS_HMAC_KEY: () => randomBytes(32).toString("hex"),
  AUDIT_HMAC_KEY: () => randomBytes(32).toString("hex"),
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
  AWS_ACCESS_KEY_ID: "caracal-dev",
  AWS_SECRET_ACCESS_KEY: "caracal-dev",
  LOG_LEVEL: process.env.LOG_LEVEL ?? "info"
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
    body: "{}",
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
}

// Report when every service answers /ready.
const deadline = Date.now() + 60_000
const check = async (): Promise<void> => {
  const states = await Promise.all(services.map(async (s) => {
    const ready = await fetch(`http://127.0.0.1:${s.port}/ready`).then((r) => r.status === 200, () => false)
    return { ...s, ready }
  }))
  if (states.every((s) => s.ready)) {
    await bootstrap()
    console.log("\nCaracal is up (development mode):")
    for (const s of states) console.log(`  ${s.name.padEnd(11)} http://127.0.0.1:${s.port}  (/health /ready /metrics)`)
    console.log(`  admin token in ${DEV_FILE}; Ctrl-C stops the services (infra/stack.sh stop stops the stack)\n`)
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

// Services refuse bad configuration at start: a non-zero exit and a message naming the variable.
import { execFileSync } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { Agent, request } from "node:https"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { emptyDatabase, runToExit, spareRedisServer, stackEnv, startService, type TestDatabase } from "../../core/testing/index.ts"

const env = () => ({ DATABASE_URL: db.url, REDIS_URL: stackEnv().REDIS_URL, INSECURE_HTTP: "true", STS_URL: "http://127.0.0.1:1" })
const stsEnv = () => ({ ...env(), ZONE_KEK: "2a".repeat(32), OPA_URL: stackEnv().OPA_URL })

let db: TestDatabase
beforeAll(async () => {
  db = await emptyDatabase("startup")
})
afterAll(async () => {
  await db.drop()
})

const refuses = async (service: string, vars: Record<string, string>, variable: string) => {
  const r = await runToExit(service, vars)
  expect(r.code).not.toBe(0)
  expect(r.stderr).toContain(variable)
  return r
}

describe("when a service starts with bad configuration", () => {
  it("a missing required variable stops it, naming the variable", async () => {
    const { DATABASE_URL: _, ...rest } = env()
    await refuses("coordinator", rest, "DATABASE_URL")
    const { ZONE_KEK: __, ...noKek } = stsEnv()
    const r = await refuses("sts", noKek, "ZONE_KEK")
    expect(r.stderr).toMatch(/required/)
  })

  it("ZONE_KEK of 31 bytes or all zeros stops the STS", async () => {
    expect((await refuses("sts", { ...stsEnv(), ZONE_KEK: "2a".repeat(31) }, "ZONE_KEK")).stderr).toMatch(/64 hex chars/)
    expect((await refuses("sts", { ...stsEnv(), ZONE_KEK: "0".repeat(64) }, "ZONE_KEK")).stderr).toMatch(/all zeros/)
  })

  it("only one of the TLS files stops it", async () => {
    await refuses("coordinator", { ...env(), TLS_CERT_FILE: "/nonexistent/cert.pem" }, "TLS_KEY_FILE")
    await refuses("audit", { ...env(), AUDIT_HMAC_KEY: "ab".repeat(32), TLS_KEY_FILE: "/nonexistent/key.pem" }, "TLS_CERT_FILE")
  })

  it("plain HTTP in production without INSECURE_HTTP stops it", async () => {
    const { INSECURE_HTTP: _, ...plain } = env()
    await refuses("gateway", { ...plain, STS_URL: "http://127.0.0.1:1", SERVICE_HMAC_KEY: "ab".repeat(32) }, "INSECURE_HTTP")
  })

  it("an evicting Redis (allkeys-lru) stops it in production and only warns in development", async () => {
    const lru = await spareRedisServer(["--maxmemory-policy", "allkeys-lru"])
    try {
      const r = await refuses("coordinator", { ...env(), REDIS_URL: lru.url }, "REDIS_URL")
      expect(r.stderr).toMatch(/allkeys-lru/)
      const dev = await startService("coordinator", { ...env(), REDIS_URL: lru.url, CARACAL_MODE: "development" })
      expect(dev.stdout()).toMatch(/"level":"warn".*noeviction/)
      expect(await dev.stop()).not.toBe("SIGKILL")
    } finally {
      await lru.stop()
    }
  })
})

describe("when TLS_CERT_FILE and TLS_KEY_FILE are set", () => {
  it("serves HTTPS (and no plain HTTP) with a self-signed pair, without INSECURE_HTTP", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "caracal-tls-"))
    const cert = path.join(dir, "cert.pem")
    const key = path.join(dir, "key.pem")
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert
    ], { stdio: "ignore" })
    const { INSECURE_HTTP: _, ...plain } = env()
    const svc = await startService("coordinator", { ...plain, TLS_CERT_FILE: cert, TLS_KEY_FILE: key }, { tls: true })
    try {
      const body = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = request(`${svc.url}/health`, { ca: execFileSync("cat", [cert]), agent: new Agent() }, (res) => {
          let text = ""
          res.on("data", (c) => (text += c))
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }))
        })
        req.on("error", reject)
        req.end()
      })
      expect(body.status).toBe(200)
      expect(JSON.parse(body.text)).toMatchObject({ status: "ok" })
      // the same port does not answer plain HTTP
      await expect(fetch(`http://127.0.0.1:${svc.port}/health`)).rejects.toThrow()
    } finally {
      await svc.stop()
    }
  })
})

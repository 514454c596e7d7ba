// The internal-call client over real sockets: what it signs is what a server receives (path
// prefix, query, body bytes), a self-signed https callee with insecureTls, and an unreachable
// callee as InternalCallFailed (which callers answer with 503). No stack needed.
import { execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import http from "node:http"
import https from "node:https"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect } from "effect"
import { callInternal, internalCall, InternalCallFailed, SIGNATURE_HEADER, verifyRequest } from "../../core/internal-call.ts"
import { freePort } from "../../core/testing/index.ts"

const key = randomBytes(32)
const dir = mkdtempSync(path.join(tmpdir(), "caracal-internal-call-"))

/** Answers what it received and whether the signature verified over the exact bytes. */
const handler: http.RequestListener = (req, res) => {
  const chunks: Array<Buffer> = []
  req.on("data", (c: Buffer) => chunks.push(c))
  req.on("end", () => {
    const body = Buffer.concat(chunks)
    const verdict = verifyRequest([key], req.headers[SIGNATURE_HEADER] as string | undefined, req.method ?? "", req.url ?? "", body, Math.floor(Date.now() / 1000))
    res.writeHead(verdict.ok ? 200 : 401, { "content-type": "application/json" })
    res.end(JSON.stringify({ ok: verdict.ok, method: req.method, url: req.url, body: body.toString("utf8") }))
  })
}

let plain: http.Server
let tls: https.Server
const urlOf = (s: http.Server | https.Server, scheme: string) => `${scheme}://127.0.0.1:${(s.address() as AddressInfo).port}`

beforeAll(async () => {
  const keyFile = path.join(dir, "key.pem")
  const certFile = path.join(dir, "cert.pem")
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", keyFile, "-out", certFile
  ], { stdio: "ignore" })
  plain = http.createServer(handler)
  tls = https.createServer({ key: readFileSync(keyFile), cert: readFileSync(certFile) }, handler)
  await Promise.all([plain, tls].map((s) => new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()))))
})

afterAll(async () => {
  await Promise.all([plain, tls].map((s) => new Promise((r) => s.close(r))))
  rmSync(dir, { recursive: true, force: true })
})

describe("the internal-call client", () => {
  it("signs the path the callee sees, with its query string and the base URL's prefix", async () => {
    const r = await internalCall({ baseUrl: `${urlOf(plain, "http")}/sts/`, key }, "post", "/internal/v1/x?zone=z1", { a: "é" })
    expect(r).toEqual({ status: 200, body: { ok: true, method: "POST", url: "/sts/internal/v1/x?zone=z1", body: JSON.stringify({ a: "é" }) } })
  })

  it("sends a call without a body signed over the empty body", async () => {
    const r = await internalCall({ baseUrl: urlOf(plain, "http"), key }, "GET", "/internal/v1/y")
    expect(r.body).toMatchObject({ ok: true, body: "" })
  })

  it("reaches a self-signed https callee only with insecureTls", async () => {
    const r = await internalCall({ baseUrl: urlOf(tls, "https"), key, insecureTls: true }, "POST", "/internal/v1/z", { b: 1 })
    expect(r).toMatchObject({ status: 200, body: { ok: true, body: '{"b":1}' } })
    await expect(internalCall({ baseUrl: urlOf(tls, "https"), key }, "POST", "/internal/v1/z", {})).rejects.toBeInstanceOf(InternalCallFailed)
  })

  it("a callee that is not listening is InternalCallFailed, and 503 through callInternal", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`
    await expect(internalCall({ baseUrl: dead, key }, "POST", "/internal/v1/z", {})).rejects.toBeInstanceOf(InternalCallFailed)
    const failure = await Effect.runPromise(Effect.flip(callInternal({ baseUrl: dead, key }, "POST", "/internal/v1/z", {})))
    expect(failure).toMatchObject({ _tag: "HttpError", status: 503, code: "temporarily_unavailable" })
  })

  it("a callee that does not answer in time is InternalCallFailed", async () => {
    const silent = http.createServer(() => {})
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()))
    try {
      await expect(internalCall({ baseUrl: urlOf(silent, "http"), key, timeoutMs: 300 }, "POST", "/internal/v1/z", {}))
        .rejects.toBeInstanceOf(InternalCallFailed)
    } finally {
      silent.closeAllConnections()
      await new Promise((r) => silent.close(r))
    }
  })
})

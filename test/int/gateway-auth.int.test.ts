// Mandates the gateway must refuse, each against the real sts's keys: forged algorithms,
// keys the token names or carries itself, missing or stale claims, another zone, another
// resource, oversize and non-canonical encodings. Every one is 401 (431 for a header over the
// server's limit), and the upstream never sees a request; a `jku`/`x5u` listener never sees
// a connection.
import { createHmac, randomUUID } from "node:crypto"
import http from "node:http"
import type { AddressInfo } from "node:net"
import { SignJWT } from "jose"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type GatewayHarness, startGatewayStack, zoneSigner } from "../fixtures/gateway.ts"

let g: GatewayHarness
let signer: Awaited<ReturnType<typeof zoneSigner>>
let otherSigner: Awaited<ReturnType<typeof zoneSigner>>
let otherZone: string
let listener: http.Server
let listenerConnections = 0
let listenerUrl: string

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url")

/** Claims the sts would put in a per-call mandate for `api`, with overrides (undefined removes one). */
const claims = (over: Record<string, unknown> = {}) => {
  const now = Math.floor(Date.now() / 1000)
  const base: Record<string, unknown> = {
    iss: g.api.issuer,
    sub: g.app.id,
    aud: "api",
    zone_id: g.zone,
    client_id: g.app.id,
    scope: "read",
    use: "per_call",
    iat: now,
    exp: now + 300,
    jti: randomUUID(),
    ...over
  }
  for (const [k, v] of Object.entries(base)) if (v === undefined) delete base[k]
  return base
}
const sign = (payload: Record<string, unknown>, header: Record<string, unknown> = {}, s = signer) =>
  new SignJWT(payload).setProtectedHeader({ alg: "ES256", typ: "JWT", kid: s.kid, ...header }).sign(s.key)

beforeAll(async () => {
  g = await startGatewayStack("gw_auth")
  signer = await zoneSigner(g.api, g.zone)
  otherZone = (await g.post("/v1/zones", { slug: "gw-auth-other" })).id
  otherSigner = await zoneSigner(g.api, otherZone)
  listener = http.createServer((_req, res) => res.end("{}"))
  listener.on("connection", () => void listenerConnections++)
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve))
  listenerUrl = `http://127.0.0.1:${(listener.address() as AddressInfo).port}/jwks.json`
}, 180_000)
afterAll(async () => {
  listener?.close()
  await g?.close()
})

const refusedWith = async (mandate: string, status = 401, resource = "api") => {
  const before = g.upstream.seen.length
  const r = await g.call("/anything", { mandate, resource })
  expect(r.status, r.text).toBe(status)
  if (status === 401) expect(r.headers.get("www-authenticate")).toMatch(/^Bearer error=/)
  expect(g.upstream.seen.length).toBe(before)
  return r
}

describe("mandates the gateway refuses", () => {
  it("the control: a mandate signed with the zone's key and the sts's claims passes", async () => {
    const r = await g.call("/ok", { mandate: await sign(claims()), resource: "api" })
    expect(r.status, r.text).toBe(200)
  })

  it("alg none, HS256 keyed with the zone's public key, unknown and garbage kids", async () => {
    const none = `${b64({ alg: "none", typ: "JWT", kid: signer.kid })}.${b64(claims())}.`
    await refusedWith(none)
    const hsInput = `${b64({ alg: "HS256", typ: "JWT", kid: signer.kid })}.${b64(claims())}`
    const hs = `${hsInput}.${createHmac("sha256", JSON.stringify(signer.publicJwk)).update(hsInput).digest("base64url")}`
    await refusedWith(hs)
    await refusedWith(await sign(claims(), { kid: "no-such-kid" }))
    await refusedWith(await sign(claims(), { kid: "../../etc/passwd\u0000" }))
    // a real key of another zone, claiming this zone
    await refusedWith(await sign(claims(), {}, otherSigner))
  })

  it("keys named or carried by the token are never fetched nor used", async () => {
    await refusedWith(await sign(claims(), { jku: listenerUrl }))
    await refusedWith(await sign(claims(), { x5u: listenerUrl }))
    await refusedWith(await sign(claims(), { jwk: signer.publicJwk }))
    expect(listenerConnections).toBe(0)
  })

  it("missing exp, jti, aud, zone_id or iat; expired; not yet valid; issued in the future; another issuer", async () => {
    for (const missing of ["exp", "jti", "aud", "zone_id", "iat", "iss"]) {
      const r = await refusedWith(await sign(claims({ [missing]: undefined })))
      expect(r.body.error).toBe("invalid_token")
    }
    const now = Math.floor(Date.now() / 1000)
    await refusedWith(await sign(claims({ iat: now - 600, exp: now - 60 })))
    await refusedWith(await sign(claims({ nbf: now + 600 })))
    await refusedWith(await sign(claims({ iat: now + 600, exp: now + 900 })))
    await refusedWith(await sign(claims({ iss: "http://127.0.0.1:1" })))
    await refusedWith(await sign(claims({}), { typ: "id_token+jwt" }))
  })

  it("another zone's mandate, another resource's audience, an ambient mandate", async () => {
    // a genuine mandate of the other zone: the resource is looked up there, where it does not exist
    await refusedWith(await sign(claims({ zone_id: otherZone }), {}, otherSigner))
    // minted by the sts for `plain`, presented for `api`
    await refusedWith(await g.perCall("plain"), 401, "api")
    await refusedWith(await g.ambient())
  })

  it("non-canonical encodings and oversize tokens and headers", async () => {
    // a signature with a '-' or '_' (one in 15 has neither, and its standard-alphabet form would be itself)
    let good = await sign(claims())
    while (!/[-_]/.test(good.split(".")[2]!)) good = await sign(claims())
    const [h, p, s] = good.split(".") as [string, string, string]
    await refusedWith(`${h}=.${p}.${s}`)
    await refusedWith(`${h}.${p}.${s}==`)
    await refusedWith(`${h}.${p}.${s.replace(/-/g, "+").replace(/_/g, "/")}`)
    // larger than any mandate (8 KiB), within the server's header limit: refused by the verifier
    await refusedWith(await sign(claims({ pad: "x".repeat(9000) })))
    // beyond the server's header limit: 431 before the gateway reads it
    const before = g.upstream.seen.length
    const r = await g.call("/anything", { mandate: "a".repeat(70_000), resource: "api" }).catch(() => ({ status: 431 }))
    expect(r.status).toBe(431)
    expect(g.upstream.seen.length).toBe(before)
  })

  it("a missing or malformed Authorization header", async () => {
    const before = g.upstream.seen.length
    expect((await g.call("/x", { resource: "api" })).status).toBe(401)
    expect((await g.call("/x", { resource: "api", headers: { authorization: "Basic dXNlcjpwYXNz" } })).status).toBe(401)
    expect(g.upstream.seen.length).toBe(before)
  })
})

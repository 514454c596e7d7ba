// Signed internal calls (CONTRACTS.md "Internal calls"): the header's form, what the MAC
// covers, the time window and key rotation. The nonce and the HTTP guard are exercised
// against a real Redis and a running sts in test/int/sts-internal.int.test.ts.
import { createHash, createHmac, randomBytes } from "node:crypto"
import { describe, expect, it } from "vitest"
import { keyIdOf, MAX_SKEW_SECONDS, signRequest, verifyRequest } from "../../core/internal-call.ts"

const key = randomBytes(32)
const previous = randomBytes(32)
const now = 1_800_000_000
const body = JSON.stringify({ zone_id: "z1", provider_id: "p1", material: "s3cr3t" })
const path = "/internal/v1/credentials"

const verify = (header: string | undefined, over: { method?: string; path?: string; body?: string | Uint8Array; now?: number; keys?: Array<Buffer> } = {}) =>
  verifyRequest(over.keys ?? [key], header, over.method ?? "POST", over.path ?? path, over.body ?? body, over.now ?? now)

describe("a request signed with the current key", () => {
  const header = signRequest(key, "POST", path, body, now)

  it("has the contract's form: v1 keyid=<16 hex> ts=<seconds> sig=<64 hex>", () => {
    expect(header).toMatch(/^v1 keyid=[0-9a-f]{16} ts=1800000000 sig=[0-9a-f]{64}$/)
    expect(header).toContain(`keyid=${createHash("sha256").update(key).digest("hex").slice(0, 16)}`)
  })

  it("is the HMAC-SHA256 of METHOD\\nPATH\\nts\\nhex(sha256(body))", () => {
    const expected = createHmac("sha256", key)
      .update(`POST\n${path}\n${now}\n${createHash("sha256").update(body).digest("hex")}`)
      .digest("hex")
    expect(header.endsWith(`sig=${expected}`)).toBe(true)
  })

  it("verifies, and names its signature (the nonce)", () => {
    expect(verify(header)).toEqual({ ok: true, sig: header.split("sig=")[1] })
  })

  it("verifies over the same body as bytes", () => {
    expect(verify(header, { body: Buffer.from(body, "utf8") }).ok).toBe(true)
  })

  it("verifies a lower-case method the same as upper-case", () => {
    expect(verify(signRequest(key, "post", path, body, now)).ok).toBe(true)
  })

  it("verifies within the window, either side", () => {
    expect(verify(header, { now: now + MAX_SKEW_SECONDS }).ok).toBe(true)
    expect(verify(header, { now: now - MAX_SKEW_SECONDS }).ok).toBe(true)
  })

  it("verifies with an empty body", () => {
    expect(verify(signRequest(key, "GET", "/x?a=1", "", now), { method: "GET", path: "/x?a=1", body: "" }).ok).toBe(true)
  })
})

describe("when the request was changed after signing", () => {
  const header = signRequest(key, "POST", path, body, now)
  it("a different body is refused", () => {
    expect(verify(header, { body: body.replace("s3cr3t", "s3cr3T") })).toEqual({ ok: false, reason: "signature mismatch" })
  })
  it("a body with one flipped byte is refused", () => {
    const bytes = Buffer.from(body)
    bytes[5] = bytes[5]! ^ 1
    expect(verify(header, { body: bytes }).ok).toBe(false)
  })
  it("a different path is refused", () => {
    expect(verify(header, { path: "/internal/v1/policies/compile" }).ok).toBe(false)
  })
  it("an added query string is refused", () => {
    expect(verify(header, { path: `${path}?x=1` }).ok).toBe(false)
  })
  it("a different method is refused", () => {
    expect(verify(header, { method: "PUT" }).ok).toBe(false)
  })
  it("a different timestamp in the header is refused", () => {
    expect(verify(header.replace(`ts=${now}`, `ts=${now + 1}`)).ok).toBe(false)
  })
  it("a flipped signature character is refused", () => {
    const last = header.at(-1)!
    expect(verify(header.slice(0, -1) + (last === "0" ? "1" : "0")).ok).toBe(false)
  })
})

describe("when the timestamp is outside the window", () => {
  it("a signature older than 30 s is refused", () => {
    const header = signRequest(key, "POST", path, body, now - MAX_SKEW_SECONDS - 1)
    expect(verify(header)).toEqual({ ok: false, reason: "signature too old" })
  })
  it("a signature more than 30 s in the future is refused", () => {
    const header = signRequest(key, "POST", path, body, now + MAX_SKEW_SECONDS + 1)
    expect(verify(header)).toEqual({ ok: false, reason: "signature timestamp in the future" })
  })
})

describe("when keys rotate", () => {
  it("a request signed with a previous key is accepted while that key is listed", () => {
    const header = signRequest(previous, "POST", path, body, now)
    expect(verify(header, { keys: [key, previous] }).ok).toBe(true)
  })
  it("a request signed with a key no longer listed is refused by its key id", () => {
    const header = signRequest(previous, "POST", path, body, now)
    expect(verify(header, { keys: [key] })).toEqual({ ok: false, reason: "unknown key id" })
  })
  it("a known key id with a signature made by another key is refused", () => {
    const forged = signRequest(randomBytes(32), "POST", path, body, now).replace(/keyid=[0-9a-f]{16}/, `keyid=${keyIdOf(key)}`)
    expect(verify(forged)).toEqual({ ok: false, reason: "signature mismatch" })
  })
})

describe("when the header is missing or malformed", () => {
  const good = signRequest(key, "POST", path, body, now)
  const sig = good.split("sig=")[1]!
  const cases: Array<[string, string | undefined]> = [
    ["missing", undefined],
    ["empty", ""],
    ["another version", good.replace(/^v1/, "v2")],
    ["upper-case hex", good.replace(sig, sig.toUpperCase())],
    ["a short signature", good.slice(0, -2)],
    ["a long signature", `${good}00`],
    ["a non-numeric timestamp", good.replace(`ts=${now}`, "ts=abc")],
    ["a negative timestamp", good.replace(`ts=${now}`, `ts=-${now}`)],
    ["fields reordered", `v1 ts=${now} keyid=${keyIdOf(key)} sig=${sig}`],
    ["a missing key id", `v1 ts=${now} sig=${sig}`],
    ["extra whitespace", good.replace(" ts=", "  ts=")],
    ["a trailing field", `${good} x=1`],
    ["a bearer token", "Bearer abc.def.ghi"]
  ]
  for (const [name, header] of cases) {
    it(`${name}: refused`, () => {
      const r = verify(header)
      expect(r.ok).toBe(false)
      if (!r.ok) expect(r.reason).toMatch(header === undefined || header === "" ? /unsigned/ : /malformed/)
    })
  }
})

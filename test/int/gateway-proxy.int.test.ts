// The governed call end to end: a per-call mandate from the real sts, through the gateway, to
// an upstream on loopback that records what reaches it.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type GatewayHarness, startGatewayStack } from "../fixtures/gateway.ts"

let g: GatewayHarness

beforeAll(async () => {
  g = await startGatewayStack("gw_proxy")
}, 180_000)
afterAll(async () => {
  await g?.close()
})

describe("a governed call", () => {
  it("reaches the upstream with the injected credential and without the caller's", async () => {
    const mandate = await g.perCall("api")
    const r = await g.call("/items?q=1", { mandate, resource: "api", headers: { cookie: "a=b", "x-caracal-trace": "x" } })
    expect(r.status, r.text + g.logs().slice(-3000)).toBe(200)
    const seen = g.upstream.seen.at(-1)!
    expect(seen.url).toBe("/base/items?q=1")
    expect(seen.headers["x-upstream-key"]).toBe(`Key ${g.secret}`)
    expect(seen.headers.authorization).toBeUndefined()
    expect(seen.headers.cookie).toBeUndefined()
    expect(seen.headers["x-caracal-resource"]).toBeUndefined()
  })
})

// The SDK's pure parts: which resource a URL belongs to, trace and baggage headers, and
// CARACAL_RESOURCES parsing.
import { describe, expect, it } from "vitest"
import { parseResources } from "../../sdk/src/caracal.ts"
import { makeRouter, traceIdOf, withBaggage } from "../../sdk/src/routing.ts"

describe("routing", () => {
  const route = makeRouter([
    { resourceId: "api", upstreamPrefix: "http://up:3000" },
    { resourceId: "admin", upstreamPrefix: "http://up:3000/admin" },
    { resourceId: "slash", upstreamPrefix: "http://other/v1/" }
  ])
  it("the longest matching prefix wins, whatever the order given", () => {
    expect(route("http://up:3000/admin/users")).toEqual({ resourceId: "admin", rest: "users" })
    expect(route("http://up:3000/x/y?z=1")).toEqual({ resourceId: "api", rest: "x/y?z=1" })
    expect(route("http://up:3000")).toEqual({ resourceId: "api", rest: "" })
    expect(route("http://up:3000?q")).toEqual({ resourceId: "api", rest: "?q" })
  })
  it("a prefix matches at a path boundary only; other URLs match nothing", () => {
    expect(route("http://up:30001/x")).toBeUndefined()
    expect(route("http://up:3000/administrators")).toEqual({ resourceId: "api", rest: "administrators" })
    expect(route("http://other/v1/a")).toEqual({ resourceId: "slash", rest: "a" })
    expect(route("http://elsewhere/")).toBeUndefined()
  })
})

describe("trace headers", () => {
  it("continues a valid traceparent's trace id, ignores a malformed one", () => {
    expect(traceIdOf(`00-${"ab".repeat(16)}-${"cd".repeat(8)}-01`)).toBe("ab".repeat(16))
    expect(traceIdOf("00-xyz-01")).toBeUndefined()
    expect(traceIdOf(undefined)).toBeUndefined()
  })
  it("baggage keeps the caller's members, and the caller's value for a key it set", () => {
    expect(withBaggage(null, { "caracal.agent_session_id": "s 1" })).toBe("caracal.agent_session_id=s%201")
    expect(withBaggage("a=1", { b: "2" })).toBe("a=1,b=2")
    expect(withBaggage("b=mine", { b: "2" })).toBe("b=mine")
  })
})

describe("CARACAL_RESOURCES", () => {
  it("id=prefix pairs, split at the first '='", () => {
    expect(parseResources("api=http://u/x?a=b, db=http://d")).toEqual([
      { resourceId: "api", upstreamPrefix: "http://u/x?a=b" },
      { resourceId: "db", upstreamPrefix: "http://d" }
    ])
    expect(parseResources(undefined)).toEqual([])
    for (const bad of ["api", "=http://u", "api="]) expect(() => parseResources(bad)).toThrow(/CARACAL_RESOURCES/)
  })
})

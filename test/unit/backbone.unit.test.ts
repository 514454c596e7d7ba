// Pure pieces of the backbone: signatures, classification of stream entries, upcasting,
// backoff, stream names, generated JSON Schema.
import { readFileSync } from "node:fs"
import path from "node:path"
import { describe, expect, it } from "vitest"
import { classify } from "../../core/consumer.ts"
import { makeKeys } from "../../core/redis/keys.ts"
import { backoffMs, entryFields } from "../../core/relay.ts"
import { sign, signingKey, Verifier } from "../../core/signing.ts"
import { repoRoot } from "../../core/testing/stack.ts"
import { decodeEnvelope } from "../../schemas/envelope.ts"
import { jsonSchemaFiles } from "../../services/events.ts"
import { registry } from "../fixtures/ledger.ts"

const k1 = signingKey(Buffer.alloc(32, 1))
const k2 = signingKey(Buffer.alloc(32, 2))
const stored = JSON.parse(readFileSync(path.join(repoRoot, "test/fixtures/events/FundsDeposited.v1.json"), "utf8"))

describe("stream signatures", () => {
  const v = new Verifier([k1])
  it("verify over the stream name and the exact bytes", () => {
    const s = sign(k1, "s1", '{"a":1}')
    expect(v.verify("s1", '{"a":1}', k1.id, s)).toBe("valid")
    expect(v.verify("s2", '{"a":1}', k1.id, s)).toBe("bad_signature") // copied onto another stream
    expect(v.verify("s1", '{"a": 1}', k1.id, s)).toBe("bad_signature") // re-serialised
    expect(v.verify("s1", '{"a":1}', k1.id, s.slice(0, -2))).toBe("bad_signature") // truncated MAC
  })
  it("report unsigned entries and unknown keys", () => {
    expect(v.verify("s1", "x", undefined, undefined)).toBe("unsigned")
    expect(v.verify("s1", "x", k2.id, sign(k2, "s1", "x"))).toBe("unknown_key")
  })
  it("accept every held key, so keys can rotate", () => {
    const rotating = new Verifier([k2, k1])
    expect(rotating.verify("s", "x", k1.id, sign(k1, "s", "x"))).toBe("valid")
    expect(rotating.verify("s", "x", k2.id, sign(k2, "s", "x"))).toBe("valid")
    expect(k1.id).not.toBe(k2.id)
  })
})

describe("versioned events", () => {
  it("a stored v1 payload is upcast to the latest version on read", () => {
    const env = decodeEnvelope(stored)
    expect(env._tag).toBe("Success")
    const decoded = registry.decode(stored.type, stored.schemaVersion, stored.data)
    expect(decoded).toMatchObject({ _tag: "Success", success: { type: "FundsDeposited", version: 2, data: { amount: 42, currency: "EUR" } } })
  })
  it("an unknown version or type, or data of the wrong shape, is refused with its reason", () => {
    expect(registry.decode("FundsDeposited", 3, {})).toMatchObject({ _tag: "Failure", failure: { reason: "unknown_event_version" } })
    expect(registry.decode("Nope", 1, {})).toMatchObject({ _tag: "Failure", failure: { reason: "unknown_event_type" } })
    expect(registry.decode("FundsDeposited", 1, { amount: "x" })).toMatchObject({ _tag: "Failure", failure: { reason: "invalid_event_data" } })
  })
  it("a new version needs an upcaster and versions register in order", async () => {
    const { EventRegistry } = await import("../../schemas/registry.ts")
    const { Schema } = await import("effect")
    expect(() => new EventRegistry().register({ type: "X", version: 2, data: Schema.Unknown })).toThrow(/in order/)
    expect(() => new EventRegistry().register({ type: "X", version: 1, data: Schema.Unknown }, { type: "X", version: 2, data: Schema.Unknown })).toThrow(/upcaster/)
  })
})

describe("classifying a stream entry", () => {
  const stream = "p:{account}:events"
  const fields = entryFields(stream, stored, k1)
  const verifier = new Verifier([k1])
  it("accepts a signed, well-formed entry and upcasts it", () => {
    const c = classify(stream, "1-0", fields, registry, verifier)
    expect(c).toMatchObject({ ok: true, event: { signature: "valid", envelope: { schemaVersion: 2, data: { currency: "EUR" } } } })
  })
  it("names the reason for each kind of poison", () => {
    expect(classify(stream, "1-0", ["e", fields[1]!], registry, verifier)).toEqual({ ok: false, reason: "unsigned" })
    expect(classify("other", "1-0", fields, registry, verifier)).toEqual({ ok: false, reason: "bad_signature" })
    expect(classify(stream, "1-0", ["e", "{x", "k", k1.id, "s", sign(k1, stream, "{x")], registry, verifier)).toEqual({ ok: false, reason: "corrupt_json" })
    const v9 = entryFields(stream, { ...stored, schemaVersion: 9 }, k1)
    expect(classify(stream, "1-0", v9, registry, verifier)).toEqual({ ok: false, reason: "unknown_event_version" })
    const noId = entryFields(stream, { ...stored, id: "nope" }, k1)
    expect(classify(stream, "1-0", noId, registry, verifier)).toEqual({ ok: false, reason: "invalid_envelope" })
    expect(classify(stream, "1-0", ["x", "y"], registry, verifier)).toEqual({ ok: false, reason: "missing_payload" })
  })
  it("without keys, does not check signatures", () => {
    expect(classify(stream, "1-0", ["e", fields[1]!], registry, undefined)).toMatchObject({ ok: true, event: { signature: "not_checked" } })
  })
})

describe("relay backoff", () => {
  it("grows exponentially, is capped at 5 minutes and is jittered", () => {
    expect(backoffMs(1, () => 1)).toBe(1000)
    expect(backoffMs(4, () => 1)).toBe(8000)
    expect(backoffMs(40, () => 1)).toBe(300_000)
    expect(backoffMs(4, () => 0.5)).toBe(4000)
  })
})

describe("stream and key names", () => {
  it("carry a hash tag per stream and refuse unsafe parts", () => {
    const keys = makeKeys("caracal")
    expect(keys.stream("agent")).toBe("caracal:{agent}:events")
    expect(keys.stream("agent", 3)).toBe("caracal:{agent.3}:events")
    expect(keys.deadLetters(keys.stream("agent"))).toBe("caracal:{agent}:events:dlq")
    expect(() => keys.stream("a b")).toThrow()
    expect(() => makeKeys("x\u0000")).toThrow()
  })
})

describe("generated JSON Schema", () => {
  it("is up to date in schemas/json (run npm run schemas)", () => {
    for (const [name, text] of jsonSchemaFiles()) {
      expect(readFileSync(path.join(repoRoot, "schemas/json", name), "utf8"), name).toBe(text)
    }
  })
})

describe("canonical JSON for log MACs", () => {
  it("sorts keys at every depth, keeps array order, and serialises scalars as ECMAScript does", async () => {
    const { canonicalJson } = await import("../../core/signing.ts")
    expect(canonicalJson({ b: 1, a: [3, { d: "x", c: null }], "é": true, A: 1.5e21, z: undefined })).toBe(
      '{"A":1.5e+21,"a":[3,{"c":null,"d":"x"}],"b":1,"é":true}'
    )
    expect(canonicalJson("line\nbreak \u2028")).toBe(JSON.stringify("line\nbreak \u2028"))
  })
  it("the log's fixed-shape serialiser equals the generic one", async () => {
    const { canonicalJson, canonicalLogged } = await import("../../core/signing.ts")
    const f = {
      id: "i", type: "T", schemaVersion: 2, zoneId: "z", aggregateType: "a", aggregateId: "b\"c", sequence: 7,
      occurredAt: "2026-01-01T00:00:00.000Z", actor: { kind: "k", id: "i" }, correlationId: "c", causationId: null, data: { y: [1, 2], x: { q: 1 } }
    }
    expect(canonicalLogged(f)).toBe(canonicalJson(f))
  })
})

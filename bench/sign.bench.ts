// Serialise + sign one envelope, beside the raw HMAC of the same bytes (the ceiling).
import { createHmac, randomBytes } from "node:crypto"
import { entryFields } from "../core/relay.ts"
import { signingKey } from "../core/signing.ts"
import { report } from "./lib.ts"

const key = signingKey(randomBytes(32))
const stream = "caracal:{agent}:events"
const envelope = {
  id: "01933f2e-7c1a-7a3b-9c2d-3e4f5a6b7c8d", type: "AgentSpawned", schemaVersion: 1, zoneId: "zone-1",
  aggregate: { type: "agent", id: "ag-123456" }, sequence: 1, position: "123456", occurredAt: "2026-11-29T10:00:00.000Z",
  actor: { kind: "application", id: "app-xyz456" }, correlationId: "c-1", causationId: null,
  data: { applicationId: "app-xyz456", parentId: null, kind: "instance", ttlSeconds: 3600, metadata: { task: "demo" } }
}
const bytes = JSON.stringify(envelope)
const N = 200_000

const time = (f: () => void) => {
  for (let i = 0; i < 20_000; i++) f() // warm up
  const start = process.hrtime.bigint()
  for (let i = 0; i < N; i++) f()
  return Number(process.hrtime.bigint() - start) / 1000 / N // µs per call
}

const ours = time(() => entryFields(stream, envelope, key))
const rawHmac = time(() => createHmac("sha256", key.key).update(stream).update(bytes).digest())
const rawBufferKey = randomBytes(32)
const perCallKey = time(() => createHmac("sha256", rawBufferKey).update(stream).update(bytes).digest())
// per-event cost: lower is better, so the ratio is ceiling/value expressed as value=events/s
report({ bench: "sign", metric: "serialize_sign_events_per_s", value: 1e6 / ours, unit: "events/s", ceiling: 1e6 / rawHmac })
report({ bench: "sign", metric: "serialize_sign_us_per_event", value: ours, unit: "us", ceiling: 5 })
report({ bench: "sign", metric: "keyobject_vs_buffer_key_speedup", value: perCallKey / rawHmac, unit: "x", ceiling: 5 })

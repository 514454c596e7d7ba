// The whole system with its audit service (sts, api, coordinator, gateway, audit over HTTP; the
// SDK and the CLI as a user runs them): an agent spawns a child, delegates a narrower scope,
// the child calls the upstream through the gateway with the SDK's fetch — and the audit
// timeline of the child's session shows the exchange, the delegation and the call, and
// `caracal audit verify` passes on the zone's chain.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runScript } from "../../core/testing/index.ts"
import { checkpointSigner } from "../../services/audit/checkpoint.ts"
import type { Caracal } from "../../sdk/src/index.ts"
import { type GatewayHarness, sdkFor, startGatewayStack } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"

let g: GatewayHarness
let caracal: Caracal
const UPSTREAM = "https://ledger.example"

const cli = (args: ReadonlyArray<string>) =>
  runScript("cli/main.ts", args, {
    DATABASE_URL: g.api.dbUrl,
    REDIS_URL: g.api.env.REDIS_URL!,
    AUDIT_HMAC_KEY: g.auditEnv!.AUDIT_HMAC_KEY!,
    AUDIT_CHECKPOINT_PUBLIC_KEY: checkpointSigner(Buffer.from(g.auditEnv!.AUDIT_CHECKPOINT_KEY!, "hex")).publicKeyHex
  }, 60_000)

beforeAll(async () => {
  g = await startGatewayStack("e2e_audit", { audit: true })
  caracal = await sdkFor(g, [{ resourceId: "api", upstreamPrefix: UPSTREAM }])
}, 180_000)
afterAll(async () => {
  await g?.close()
})

describe("an agent's governed call, as the audit trail tells it", () => {
  it("the child's timeline shows the delegation, the exchange and the call; the chain verifies", async () => {
    const story = await caracal.spawn(async (root) =>
      root.spawn(async (child) => {
        const edge = await root.delegate({ to: child, scopes: ["read"], resources: ["api"], ttlSeconds: 120 })
        return caracal.asDelegate(edge, async () => {
          const res = await caracal.fetch(`${UPSTREAM}/entries`)
          return { status: res.status, child: child.id, edge: edge.id }
        })
      }))
    expect(story.status).toBe(200)

    type Line = { source: string; kind: string; decision: string | null; body: Record<string, unknown> }
    let lines: Array<Line> = []
    await until(async () => {
      const r = await cli(["audit", "timeline", "--session", story.child, "--zone", g.zone, "--json"])
      lines = r.code === 0 ? r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Line) : []
      const kinds = new Set(lines.map((l) => l.kind))
      return kinds.has("DelegationCreated") && kinds.has("token_exchange") && kinds.has("proxy")
    }, 60_000, "the delegation, the exchange and the call chained")
    expect(lines.find((l) => l.kind === "proxy")).toMatchObject({ decision: "allow", body: { agent_session_id: story.child, delegation_edge_id: story.edge } })
    expect(lines.find((l) => l.kind === "token_exchange" && l.decision === "allow")).toBeTruthy()

    // the human form names all three too
    const human = await cli(["audit", "timeline", "--session", story.child, "--zone", g.zone])
    expect(human.code, human.stderr).toBe(0)
    for (const kind of ["DelegationCreated", "token_exchange", "proxy"]) expect(human.stdout).toContain(kind)

    const verified = await cli(["audit", "verify", "--zone", g.zone])
    expect(verified.code, verified.stdout + verified.stderr).toBe(0)
  })
})

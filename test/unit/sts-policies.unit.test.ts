// The pure parts of the sts's policy engine: how zones and versions are named in OPA, how a
// policy's text is moved into its zone's package, and how OPA's answer becomes a decision.
import { describe, expect, it } from "vitest"
import {
  decisionPath,
  pointerId,
  pointerModule,
  policyModuleId,
  readDecision,
  versionPackage,
  versionSegment,
  zonePackage,
  zoneSegment
} from "../../services/sts/opa.ts"
import { InvalidPolicy, rewriteModule } from "../../services/sts/policies.ts"

const ZONE = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
const SET_VERSION = "0193a1b2-c3d4-7e5f-8a9b-ffffffffffff"

describe("names in OPA", () => {
  it("a UUID zone is z and its 32 hex digits, a valid Rego identifier", () => {
    expect(zoneSegment(ZONE)).toBe("z0193a1b2c3d47e5f8a9b0c1d2e3f4a5b")
    expect(zonePackage(ZONE)).toBe("caracal.zones.z0193a1b2c3d47e5f8a9b0c1d2e3f4a5b.authz")
    expect(decisionPath(ZONE)).toBe("caracal/zones/z0193a1b2c3d47e5f8a9b0c1d2e3f4a5b/authz/result")
  })

  it("any other id is hex-encoded behind an underscore: one-to-one, and never a UUID's name", () => {
    const ids = [ZONE, ZONE.toUpperCase(), "z1", "z-1", "z_1", "Z1", "a.b", "", "é"]
    const names = ids.map(zoneSegment)
    expect(new Set(names).size).toBe(ids.length)
    for (const n of names) expect(n).toMatch(/^z[A-Za-z0-9_]*$/)
    expect(zoneSegment("z-1")).toBe(`z_${Buffer.from("z-1").toString("hex")}`)
  })

  it("a version's package sits under its zone, apart from the zone's decision package", () => {
    expect(versionPackage(ZONE, SET_VERSION)).toBe(`caracal.zones.${zoneSegment(ZONE)}.${versionSegment(SET_VERSION)}.authz`)
    expect(pointerModule(ZONE, SET_VERSION)).toContain(`package ${zonePackage(ZONE)}\n`)
    expect(pointerModule(ZONE, SET_VERSION)).toContain(`result := data.${versionPackage(ZONE, SET_VERSION)}.result\n`)
  })

  it("module ids start with the deployment's prefix and the zone, so a sync lists and deletes its own", () => {
    expect(pointerId("caracal", ZONE)).toBe(`caracal/zones/${zoneSegment(ZONE)}/active`)
    expect(policyModuleId("caracal", ZONE, SET_VERSION, "p1", "v1")).toBe(`caracal/zones/${zoneSegment(ZONE)}/${versionSegment(SET_VERSION)}/p1/v1`)
  })
})

describe("a policy's text moved into its zone's package", () => {
  const pkg = versionPackage(ZONE, SET_VERSION)

  it("the package line is rewritten in place (rows keep their numbers)", () => {
    const text = "# header\n\npackage caracal.authz\n\nresult := {\"allow\": true}\n"
    const out = rewriteModule("m", text, pkg)
    expect(out).toBe(`# header\n\npackage ${pkg}\n\nresult := {"allow": true}\n`)
  })

  it("references to data.caracal.authz (and imports of it) point at the zone's package; look-alikes do not", () => {
    const text = [
      "package caracal.authz",
      "import data.caracal.authz",
      "a if data.caracal.authz.reads",
      "b if data.caracal.authz[\"reads\"]",
      "c if input.data.caracal.authz.x",
      "d if data.caracal.authzx",
      "e if data.caracal.zones"
    ].join("\n")
    const out = rewriteModule("m", text, pkg) as string
    expect(out.split("\n")).toEqual([
      `package ${pkg}`,
      `import data.${pkg}`,
      `a if data.${pkg}.reads`,
      `b if data.${pkg}["reads"]`,
      "c if input.data.caracal.authz.x",
      "d if data.caracal.authzx",
      "e if data.caracal.zones"
    ])
  })

  it("a module in another package is refused", () => {
    expect(rewriteModule("m", "package other\nresult := 1\n", pkg)).toBeInstanceOf(InvalidPolicy)
  })
})

describe("OPA's answer as a decision", () => {
  const id = () => "fresh-id"

  it("only an explicit allow: true grants", () => {
    expect(readDecision({ result: { allow: true, reason: "ok" } }, id)).toEqual({ allow: true, reason: "ok", decisionId: "fresh-id" })
    for (const allow of ["true", 1, {}, null, undefined]) {
      expect(readDecision({ result: { allow, reason: "r" } }, id)?.allow).toBe(false)
    }
    for (const result of [true, "allow", [true], 1, null]) expect(readDecision({ result }, id)?.allow).toBe(false)
  })

  it("an undefined result is no decision (the caller denies no_active_policy)", () => {
    expect(readDecision({}, id)).toBeUndefined()
    expect(readDecision(undefined, id)).toBeUndefined()
  })

  it("the reason defaults by outcome and is bounded; OPA's decision_id is kept", () => {
    expect(readDecision({ result: { allow: true } }, id)?.reason).toBe("policy_allowed")
    expect(readDecision({ result: { allow: false, reason: 7 } }, id)?.reason).toBe("policy_denied")
    expect(readDecision({ result: { allow: false, reason: "x".repeat(1000) } }, id)?.reason).toHaveLength(200)
    expect(readDecision({ result: { allow: false }, decision_id: "opa-1" }, id)?.decisionId).toBe("opa-1")
  })
})

// The client configuration: caracal.toml discovery in the seed's order, every field,
// errors naming file, line and field, .env parsing, the tree drawing.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { describe, expect, it } from "vitest"
import { drawTree } from "../../cli/agents.ts"
import { bodyOf } from "../../cli/admin.ts"
import { ClientConfigError, discoverConfig, loadClientEnv, parseCaracalToml, parseEnvFile } from "../../cli/client-config.ts"

const FULL = `zone_url = "https://api.example.com/"
zone_id = "z1"
application_id = "app-1"
app_client_secret = "secret-1"
continue_on_failure = true

[[credentials]]
env = "DATABASE_URL"
resource = "postgres"

[[optional_credentials]]
env = "MAIL_TOKEN"
resource = "mail"
on_failure = "warn"

[mcp_governance]
mode = "log"
`

describe("caracal.toml discovery", () => {
  const tree = () => {
    const root = mkdtempSync(path.join(os.tmpdir(), "caracal-disc-"))
    const cwd = path.join(root, "cwd")
    const xdg = path.join(root, "xdg")
    const home = path.join(root, "home")
    for (const d of [cwd, path.join(xdg, "caracal"), path.join(home, ".config", "caracal")]) mkdirSync(d, { recursive: true })
    return { root, cwd, xdg, home }
  }

  it("CARACAL_CONFIG, then ./caracal.toml, then $XDG_CONFIG_HOME/caracal, then ~/.config/caracal", () => {
    const t = tree()
    const homeFile = path.join(t.home, ".config", "caracal", "caracal.toml")
    writeFileSync(homeFile, FULL)
    expect(discoverConfig({ HOME: t.home }, t.cwd)).toBe(homeFile)
    const xdgFile = path.join(t.xdg, "caracal", "caracal.toml")
    writeFileSync(xdgFile, FULL)
    expect(discoverConfig({ HOME: t.home, XDG_CONFIG_HOME: t.xdg }, t.cwd)).toBe(xdgFile)
    // with XDG_CONFIG_HOME set, ~/.config is not looked at
    expect(discoverConfig({ HOME: t.home, XDG_CONFIG_HOME: path.join(t.root, "empty") }, t.cwd)).toBeUndefined()
    const local = path.join(t.cwd, "caracal.toml")
    writeFileSync(local, FULL)
    expect(discoverConfig({ HOME: t.home, XDG_CONFIG_HOME: t.xdg }, t.cwd)).toBe(local)
    const named = path.join(t.root, "named.toml")
    writeFileSync(named, FULL)
    expect(discoverConfig({ HOME: t.home, XDG_CONFIG_HOME: t.xdg, CARACAL_CONFIG: "../named.toml" }, t.cwd)).toBe(named)
    expect(() => discoverConfig({ CARACAL_CONFIG: path.join(t.root, "missing.toml") }, t.cwd)).toThrow(/CARACAL_CONFIG: .*missing.toml does not exist/)
  })

  it("variables win over caracal.toml, which wins over the defaults", () => {
    const t = tree()
    writeFileSync(path.join(t.cwd, "caracal.toml"), FULL)
    const fromToml = loadClientEnv({ HOME: t.home }, t.cwd)
    expect(fromToml).toMatchObject({ apiUrl: "https://api.example.com", zoneId: "z1", coordinatorUrl: "http://localhost:4000", dataDir: path.join(t.home, ".local/share/caracal") })
    const fromEnv = loadClientEnv({ HOME: t.home, CARACAL_API_URL: "http://a:1", CARACAL_ZONE_ID: "z2", XDG_DATA_HOME: "/data", CARACAL_COORDINATOR_URL: "http://c:2/" }, t.cwd)
    expect(fromEnv).toMatchObject({ apiUrl: "http://a:1", zoneId: "z2", dataDir: "/data/caracal", coordinatorUrl: "http://c:2" })
    expect(loadClientEnv({ HOME: t.home }, t.root)).toMatchObject({ apiUrl: "http://localhost:3000", zoneId: undefined, toml: undefined })
    expect(() => loadClientEnv({ HOME: t.home, CARACAL_API_URL: "localhost:3000" }, t.root)).toThrow("CARACAL_API_URL: must be an http(s) URL")
  })
})

describe("caracal.toml fields", () => {
  it("reads every field", () => {
    expect(parseCaracalToml("c.toml", FULL)).toEqual({
      file: "c.toml",
      zoneUrl: "https://api.example.com",
      zoneId: "z1",
      applicationId: "app-1",
      appClientSecret: "secret-1",
      continueOnFailure: true,
      credentials: [{ env: "DATABASE_URL", resource: "postgres" }],
      optionalCredentials: [{ env: "MAIL_TOKEN", resource: "mail", onFailure: "warn" }],
      mcpMode: "log"
    })
    const minimal = FULL.split("\n").slice(0, 4).join("\n")
    expect(parseCaracalToml("c.toml", minimal)).toMatchObject({ continueOnFailure: false, credentials: [], optionalCredentials: [], mcpMode: "block" })
  })

  const error = (source: string) => {
    try {
      parseCaracalToml("c.toml", source)
    } catch (e) {
      expect(e).toBeInstanceOf(ClientConfigError)
      return (e as Error).message
    }
    throw new Error("accepted")
  }

  it("names the file, the line and the field", () => {
    expect(error(FULL.replace('zone_id = "z1"', "zone_id = 1"))).toBe("c.toml:2: zone_id: must be a non-empty string")
    expect(error(FULL.replace('zone_id = "z1"\n', ""))).toBe("c.toml: zone_id: is required")
    expect(error(FULL.replace("continue_on_failure = true", 'continue_on_failure = "yes"'))).toBe("c.toml:5: continue_on_failure: must be true or false")
    expect(error(FULL.replace('on_failure = "warn"', 'on_failure = "ignore"'))).toBe('c.toml:14: optional_credentials[0].on_failure: must be "warn" or "error"')
    expect(error(FULL.replace('env = "DATABASE_URL"', 'env = "DATABASE URL"'))).toBe("c.toml:8: credentials[0].env: must be an environment variable name")
    expect(error(FULL.replace('mode = "log"', 'mode = "audit"'))).toBe('c.toml:17: mcp_governance.mode: must be "block" or "log"')
    expect(error(FULL + "\n[[credentials]]\nenv = \"X\"\nresorce = \"y\"\n")).toBe("c.toml:21: credentials[1].resorce: unknown field")
    expect(error(FULL.replace("zone_url", "zone_uri"))).toBe("c.toml:1: zone_uri: unknown field")
    expect(error(FULL.replace('zone_url = "https://api.example.com/"', 'zone_url = "api.example.com"'))).toBe("c.toml:1: zone_url: must be an http(s) URL")
    expect(error(`mcp_governance = "block"\n${FULL.replace('[mcp_governance]\nmode = "log"', "")}`)).toBe("c.toml:1: mcp_governance: must be a table ([mcp_governance])")
  })

  it("a TOML syntax error gives its line and column", () => {
    expect(error(FULL.replace('application_id = "app-1"', "application_id = app-1"))).toMatch(/^c\.toml:3:\d+: invalid TOML: /)
  })
})

describe(".env files", () => {
  it("KEY=VALUE, export, quotes, comments; a bad line names its line", () => {
    expect(parseEnvFile("e", "# c\nA=1\nexport B = two words # note\nC=\"x # y\"\nD='q'\n\nE=\"a\\nb\"\n")).toEqual({ A: "1", B: "two words", C: "x # y", D: "q", E: "a\nb" })
    expect(() => parseEnvFile("e", "A=1\nB\n")).toThrow("e:2: expected KEY=VALUE")
    expect(() => parseEnvFile("e", 'A="open\n')).toThrow("e:1: A: unterminated quote")
  })
})

describe("admin bodies", () => {
  it("--set values are JSON when they parse, text otherwise; scopes take comma lists; --data is an object", () => {
    expect(bodyOf(["name=x", "n=3", "requires_grant=true", "scopes=read,write", "meta={\"a\":1}"], undefined)).toEqual({
      name: "x", n: 3, requires_grant: true, scopes: ["read", "write"], meta: { a: 1 }
    })
    expect(bodyOf(["name=y"], '{"name":"x","slug":"s"}')).toEqual({ name: "y", slug: "s" })
    expect(() => bodyOf([], "[1]")).toThrow("--data must be a JSON object")
    expect(() => bodyOf(["novalue"], undefined)).toThrow("expected key=value")
  })
})

describe("trees", () => {
  it("draws children under their parents with ├─ └─ │", () => {
    const nodes = [
      { id: "r", p: null },
      { id: "a", p: "r" },
      { id: "a1", p: "a" },
      { id: "a2", p: "a" },
      { id: "b", p: "r" },
      { id: "b1", p: "b" }
    ]
    expect(drawTree(nodes, (n) => n.id, (n) => n.p, (n) => n.id)).toEqual([
      "r",
      "├─ a",
      "│  ├─ a1",
      "│  └─ a2",
      "└─ b",
      "   └─ b1"
    ])
  })
})

describe("the README", () => {
  it("shows the client variables generated from cli/client-config.ts (run npm run docs:config)", async () => {
    const { readFileSync } = await import("node:fs")
    const { withClientTable } = await import("../../cli/client-config.ts")
    const { repoRoot } = await import("../../core/stack-env.ts")
    const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8")
    expect(readme).toBe(withClientTable(readme))
  })
})

describe("caracal config init --demo", () => {
  it("writes a caracal.toml for npm start's demo zone that parses, mode 0600, and never overwrites silently", async () => {
    const { statSync, readFileSync } = await import("node:fs")
    const { writeDemoConfig } = await import("../../cli/client-config.ts")
    const root = mkdtempSync(path.join(os.tmpdir(), "caracal-demo-"))
    const data = path.join(root, "data")
    const env = loadClientEnv({ HOME: root, XDG_DATA_HOME: data }, root, { skipToml: true })
    expect(() => writeDemoConfig(env, root, false)).toThrow(/demo\.json does not exist: run npm start first/)
    mkdirSync(path.join(data, "caracal"), { recursive: true })
    writeFileSync(path.join(data, "caracal", "demo.json"), JSON.stringify({ zone_id: "z9", application_id: "app9", client_secret: "cs_9", resource: "demo-api" }))
    const file = writeDemoConfig(env, root, false)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(parseCaracalToml(file, readFileSync(file, "utf8"))).toMatchObject({
      zoneUrl: "http://localhost:3000", zoneId: "z9", applicationId: "app9", appClientSecret: "cs_9",
      credentials: [{ env: "DEMO_API_TOKEN", resource: "demo-api" }], mcpMode: "block"
    })
    expect(() => writeDemoConfig(env, root, false)).toThrow(/exists \(--force replaces it\)/)
    expect(writeDemoConfig(env, root, true)).toBe(file)
  })
})

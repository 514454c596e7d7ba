import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Redacted } from "effect"
import { loadService } from "../../core/config/load.ts"
import { type ServiceName, serviceSpecs } from "../../services/specs.ts"

const base = {
  DATABASE_URL: "postgres://u:p@127.0.0.1:5432/db",
  REDIS_URL: "redis://127.0.0.1:6379",
  INSECURE_HTTP: "true",
  STS_URL: "http://127.0.0.1:8080",
  // internal calls (sts, api, gateway); extra variables are ignored by the others
  SERVICE_HMAC_KEY: "5e".repeat(32)
}
const stsBase = { ...base, ZONE_KEK: "11".repeat(32), OPA_URL: "http://127.0.0.1:8181" }

const load = <N extends ServiceName>(service: N, env: Record<string, string>) =>
  loadService(service, serviceSpecs[service]).pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))

const failsOn = (service: ServiceName, env: Record<string, string>, variable: string, rule: RegExp) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(load(service, env))
    assert.strictEqual(error.variable, variable)
    assert.match(error.message, rule)
    assert.include(error.message, variable)
  })

describe("configuration", () => {
  it.effect("applies the reference defaults per service", () =>
    Effect.gen(function*() {
      const co = (yield* load("coordinator", base)).vars
      assert.deepStrictEqual(
        [co.PORT, co.OUTBOX_POLL_MS, co.OUTBOX_BATCH_SIZE, co.OUTBOX_MAX_ATTEMPTS, co.MAX_DEPTH, co.MAX_CHILDREN, co.MAX_PER_ZONE, co.MAX_PER_APP, co.DEFAULT_TTL_SECONDS, co.LOG_LEVEL],
        [4000, 1000, 50, 10, 10, 10, 50, 200, 3600, "info"]
      )
      const api = (yield* load("api", { ...base, ADMIN_TOKEN: "a".repeat(32), STS_URL: "http://127.0.0.1:8080" })).vars
      assert.deepStrictEqual([api.PORT, api.OUTBOX_POLL_MS, api.OUTBOX_BATCH_SIZE, api.OUTBOX_MAX_ATTEMPTS, api.INSECURE_STS], [3000, 250, 32, 100, false])
      const gw = (yield* load("gateway", { ...base, STS_URL: "http://127.0.0.1:8080" })).vars
      assert.deepStrictEqual([gw.PORT, gw.BINDINGS_RELOAD_MS, gw.JTI_CACHE_SIZE], [8081, 30000, 10000])
      const audit = (yield* load("audit", { ...base, AUDIT_HMAC_KEY: "ab".repeat(32) })).vars
      assert.deepStrictEqual([audit.PORT, audit.AUDIT_RETENTION_DAYS, audit.AUDIT_MAX_DELIVERIES, audit.AUDIT_EXPORT_S3_REGION], [9090, 365, 5, "us-east-1"])
      const sts = yield* load("sts", stsBase)
      assert.strictEqual(sts.vars.PORT, 8080)
      assert.strictEqual(sts.mode, "production")
      // AUDIT_STREAM_URL defaults to REDIS_URL's value
      assert.strictEqual(Redacted.value(sts.vars.AUDIT_STREAM_URL), base.REDIS_URL)
    }))

  it.effect("keeps secrets redacted", () =>
    Effect.gen(function*() {
      const sts = yield* load("sts", stsBase)
      assert.notInclude(String(sts.vars.ZONE_KEK), "11111111")
      assert.notInclude(JSON.stringify(sts.vars), "u:p@")
      assert.strictEqual(Redacted.value(sts.vars.ZONE_KEK).length, 32)
    }))

  it.effect("names a missing required variable", () => failsOn("sts", { ...stsBase, ZONE_KEK: "" }, "ZONE_KEK", /required/))
  it.effect("refuses a 31-byte ZONE_KEK", () => failsOn("sts", { ...stsBase, ZONE_KEK: "11".repeat(31) }, "ZONE_KEK", /64 hex chars/))
  it.effect("refuses an all-zero ZONE_KEK", () => failsOn("sts", { ...stsBase, ZONE_KEK: "00".repeat(32) }, "ZONE_KEK", /all zeros/))
  it.effect("refuses a non-hex ZONE_KEK", () => failsOn("sts", { ...stsBase, ZONE_KEK: "zz".repeat(32) }, "ZONE_KEK", /hex/))
  it.effect("refuses one TLS file without the other", () =>
    Effect.gen(function*() {
      yield* failsOn("coordinator", { ...base, TLS_CERT_FILE: "/tmp/cert.pem" }, "TLS_KEY_FILE", /both or neither/)
      yield* failsOn("coordinator", { ...base, TLS_KEY_FILE: "/tmp/key.pem" }, "TLS_CERT_FILE", /both or neither/)
    }))
  it.effect("accepts LOG_LEVEL only in lower case", () =>
    Effect.gen(function*() {
      yield* failsOn("coordinator", { ...base, LOG_LEVEL: "INFO" }, "LOG_LEVEL", /lower case/)
      assert.strictEqual((yield* load("coordinator", { ...base, LOG_LEVEL: "debug" })).vars.LOG_LEVEL, "debug")
    }))
  it.effect("refuses plain HTTP in production without INSECURE_HTTP", () =>
    Effect.gen(function*() {
      const { INSECURE_HTTP: _, ...plain } = base
      yield* failsOn("coordinator", plain, "INSECURE_HTTP", /production/)
      const dev = yield* load("coordinator", { ...plain, CARACAL_MODE: "development" })
      assert.strictEqual(dev.mode, "development")
      assert.strictEqual(dev.tls, undefined)
    }))
  it.effect("validates numbers and URLs", () =>
    Effect.gen(function*() {
      yield* failsOn("coordinator", { ...base, MAX_CHILDREN: "ten" }, "MAX_CHILDREN", /integer/)
      yield* failsOn("coordinator", { ...base, PORT: "70000" }, "PORT", /between 1 and 65535/)
      yield* failsOn("coordinator", { ...base, DATABASE_URL: "mysql://x" }, "DATABASE_URL", /postgres/)
      yield* failsOn("coordinator", { ...base, CARACAL_MODE: "prod" }, "CARACAL_MODE", /production, development/)
      yield* failsOn("api", { ...base, ADMIN_TOKEN: "short", STS_URL: "http://x" }, "ADMIN_TOKEN", /16 characters/)
    }))
})

// The fixed-window counter behind the sts's token budget and the api's admin failure budget.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { testRedis, type TestRedis } from "../../core/testing/index.ts"
import { countInWindow } from "../../core/redis/window-count.ts"
import { luaScript } from "../../core/redis/script.ts"
import { until } from "../fixtures/harness.ts"

let r: TestRedis
beforeAll(async () => {
  r = await testRedis("windowcount")
})
afterAll(() => r.close())

describe("a fixed-window counter", () => {
  it("counts within the window its first count started, and starts again after it", async () => {
    const key = r.keys.key("window", "a")
    expect(await countInWindow(r.redis, key, 1)).toBe(1)
    expect(await countInWindow(r.redis, key, 1)).toBe(2)
    expect(await countInWindow(r.redis, key, 1)).toBe(3)
    const ttl = await r.redis.pttl(key)
    expect(ttl).toBeGreaterThan(0)
    expect(ttl).toBeLessThanOrEqual(1000)
    // the window is not extended by later counts: it ends, and the next count is the first again
    await until(async () => (await r.redis.exists(key)) === 0, 10_000, "the window's end")
    expect(await countInWindow(r.redis, key, 1)).toBe(1)
  })

  it("gives a counter left without an expiry one, so it cannot lock out forever", async () => {
    const key = r.keys.key("window", "b")
    await r.redis.set(key, "5")
    expect(await r.redis.pttl(key)).toBe(-1)
    expect(await countInWindow(r.redis, key, 60)).toBe(6)
    const ttl = await r.redis.pttl(key)
    expect(ttl).toBeGreaterThan(0)
    expect(ttl).toBeLessThanOrEqual(60_000)
  })

  it("counts concurrent callers exactly once each", async () => {
    const key = r.keys.key("window", "c")
    const counts = await Promise.all(Array.from({ length: 50 }, () => countInWindow(r.redis, key, 60)))
    expect([...counts].sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1))
  })

  it("runs again after the server has forgotten its scripts, and a script's own error still fails the call", async () => {
    const key = r.keys.key("window", "d")
    expect(await countInWindow(r.redis, key, 60)).toBe(1)
    // a restart or a SCRIPT FLUSH empties the script cache: EVALSHA answers NOSCRIPT, the
    // call falls back to EVAL (which loads it again) and counts once, not twice
    await r.redis.script("FLUSH")
    expect(await countInWindow(r.redis, key, 60)).toBe(2)
    expect(await countInWindow(r.redis, key, 60)).toBe(3)
    const failing = luaScript<number>("return redis.error_reply('BOOM ' .. KEYS[1])")
    await expect(failing(r.redis, [key], [])).rejects.toThrow(/BOOM/)
    await r.redis.script("FLUSH")
    await expect(failing(r.redis, [key], [])).rejects.toThrow(/BOOM/)
  })
})

// A Redis key prefix per test file: keys and streams of parallel files never meet.
import { Redis } from "ioredis"
import { randomBytes } from "node:crypto"
import { spawn } from "node:child_process"
import { makeKeys, type Keys } from "../redis/keys.ts"
import { stackEnv } from "./stack.ts"
import { freePort, waitFor } from "./process.ts"

export interface TestRedis {
  readonly redis: Redis
  readonly keys: Keys
  /** Deletes every key under the prefix and closes the connection. */
  readonly close: () => Promise<void>
}

export const redisPrefix = (label: string) => `t${label.replace(/[^A-Za-z0-9]/g, "").slice(0, 20)}${randomBytes(3).toString("hex")}`

export const testRedis = async (label: string): Promise<TestRedis> => {
  const redis = new Redis(stackEnv().REDIS_URL, { lazyConnect: true })
  redis.on("error", () => {})
  await redis.connect()
  const keys = makeKeys(redisPrefix(label))
  return {
    redis,
    keys,
    close: async () => {
      await dropPrefix(redis, keys.prefix)
      await redis.quit()
    }
  }
}

/**
 * Deletes every key under `prefix` in db0 (streams, projections) and db1 (limits, claims):
 * what a test or benchmark wrote must not stay behind in the shared Redis, where it grows
 * every snapshot and rewrite of the append-only file (a fork of a large Redis stalls it).
 */
export const dropPrefix = async (redis: Redis, prefix: string) => {
  for (const db of [0, 1]) {
    await redis.select(db)
    let cursor = "0"
    do {
      const [next, found] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 500)
      cursor = next
      if (found.length > 0) await redis.unlink(...found)
    } while (cursor !== "0")
  }
  await redis.select(0)
}

/** A separate, throwaway redis-server (e.g. with an unsafe eviction policy) on a free port. */
export const spareRedisServer = async (args: ReadonlyArray<string>) => {
  const port = await freePort()
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...args], {
    stdio: "ignore"
  })
  const url = `redis://127.0.0.1:${port}`
  await waitFor(async () => {
    const r = new Redis(url, { lazyConnect: true, retryStrategy: () => null })
    r.on("error", () => {})
    try {
      await r.connect()
      await r.ping()
      return true
    } catch {
      return false
    } finally {
      r.disconnect()
    }
  }, 10_000)
  return { url, port, stop: () => new Promise<void>((res) => { child.once("exit", () => res()); child.kill("SIGKILL") }) }
}

// Hot-path Redis commands (core/redis/command.ts) against a redis-server of their own, so its
// counters see only this file's traffic: the commands of one event-loop turn leave in one write.
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { sendReleasing } from "../../core/redis/command.ts"
import { spareRedisServer } from "../../core/testing/index.ts"

let server: Awaited<ReturnType<typeof spareRedisServer>>
let redis: Redis

/** How many times the server has read from its clients' sockets. */
const readsProcessed = async (admin: Redis) => Number(/total_reads_processed:(\d+)/.exec(await admin.info("stats"))![1])

beforeAll(async () => {
  server = await spareRedisServer([])
  redis = new Redis(server.url)
  await redis.ping()
})

afterAll(async () => {
  redis?.disconnect()
  await server?.stop()
})

describe("commands sent in one turn of the event loop", () => {
  it("reach Redis in one write, each answered in order with its own reply", async () => {
    const admin = new Redis(server.url)
    try {
      const before = await readsProcessed(admin)
      const replies = await Promise.all(Array.from({ length: 200 }, (_, i) =>
        i % 2 === 0 ? sendReleasing<string>(redis, "set", [`k${i}`, `v${i}`]) : sendReleasing<number>(redis, "incr", ["counter"])))
      // the admin's INFO is one read; the 200 commands at most a few more (one write can
      // still arrive in more than one read, but nowhere near one per command)
      const reads = (await readsProcessed(admin)) - before
      expect(reads).toBeLessThanOrEqual(5)
      expect(replies.filter((_, i) => i % 2 === 0).every((r) => r === "OK")).toBe(true)
      expect(replies.filter((_, i) => i % 2 === 1)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
      expect(await redis.get("k198")).toBe("v198")
    } finally {
      admin.disconnect()
    }
  })

  it("a command sent before the connection is ready, and one after it dropped, are still answered", async () => {
    const fresh = new Redis(server.url)
    try {
      expect(await sendReleasing<string>(fresh, "ping", [])).toBe("PONG")
      // the server closes the connection: ioredis reconnects and the next command goes on the new one
      await sendReleasing(fresh, "client", ["kill", "skipme", "no", "type", "normal"]).catch(() => undefined)
      await new Promise((r) => setTimeout(r, 50))
      expect(await sendReleasing<string>(fresh, "echo", ["after"])).toBe("after")
    } finally {
      fresh.disconnect()
    }
  })
})

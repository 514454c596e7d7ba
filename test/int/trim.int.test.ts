// Trimming never drops what a group has not acknowledged.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { testRedis, type TestRedis } from "../../core/testing/index.ts"
import { trimStream } from "../../core/trim.ts"

let r: TestRedis
beforeAll(async () => {
  r = await testRedis("trim")
})
afterAll(() => r.close())

const add = async (stream: string, n: number) => {
  const ids: Array<string> = []
  for (let i = 0; i < n; i++) ids.push((await r.redis.xadd(stream, "*", "e", String(i)))!)
  return ids
}

describe("when a stream is trimmed by age", () => {
  it("keeps every entry from the oldest pending one on, and drops acknowledged ones before it", async () => {
    const stream = r.keys.stream("trim1")
    const ids = await add(stream, 10)
    await r.redis.xgroup("CREATE", stream, "g1", "0")
    await r.redis.xgroup("CREATE", stream, "g2", "0")
    // g1 reads all 10 and acknowledges the first 6; g2 reads and acknowledges all
    await r.redis.xreadgroup("GROUP", "g1", "c", "COUNT", 10, "STREAMS", stream, ">")
    await r.redis.xack(stream, "g1", ...ids.slice(0, 6))
    await r.redis.xreadgroup("GROUP", "g2", "c", "COUNT", 10, "STREAMS", stream, ">")
    await r.redis.xack(stream, "g2", ...ids)
    // an age limit of 0 would drop everything; the pending entries of g1 survive
    const removed = await trimStream(r.redis, stream, 0, Date.now() + 1000)
    expect(removed).toBe(6)
    const left = (await r.redis.xrange(stream, "-", "+")).map(([id]) => id)
    expect(left).toEqual(ids.slice(6))
  })

  it("keeps entries a group has not been delivered yet", async () => {
    const stream = r.keys.stream("trim2")
    const ids = await add(stream, 5)
    await r.redis.xgroup("CREATE", stream, "g", "0")
    await r.redis.xreadgroup("GROUP", "g", "c", "COUNT", 2, "STREAMS", stream, ">")
    await r.redis.xack(stream, "g", ids[0]!, ids[1]!)
    expect(await trimStream(r.redis, stream, 0, Date.now() + 1000)).toBe(2)
    expect((await r.redis.xrange(stream, "-", "+")).map(([id]) => id)).toEqual(ids.slice(2))
  })

  it("does not trim entries younger than the age limit even when acknowledged", async () => {
    const stream = r.keys.stream("trim3")
    const ids = await add(stream, 3)
    await r.redis.xgroup("CREATE", stream, "g", "0")
    await r.redis.xreadgroup("GROUP", "g", "c", "COUNT", 3, "STREAMS", stream, ">")
    await r.redis.xack(stream, "g", ...ids)
    expect(await trimStream(r.redis, stream, 3_600_000)).toBe(0)
    expect(await r.redis.xlen(stream)).toBe(3)
  })
})

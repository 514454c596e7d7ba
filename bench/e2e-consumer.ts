// The e2e bench's projection consumer, in a process of its own as it runs in a deployment
// (the consuming service, not the producing one). It applies what it reads to the Postgres
// projection in batches and prints one line per applied batch: the wall-clock time it was
// applied and the event ids, so the bench measures commit → applied without its own event
// loop in the way. Its group starts at the stream's beginning, so it misses nothing that was
// appended before it joined. It stops on SIGTERM.
// Usage: e2e-consumer.ts <database url> <key prefix> <signing key hex>
import { Redis } from "ioredis"
import { makeConsumer, type ReceivedEvent } from "../core/consumer.ts"
import { makeDatabase, makeKysely } from "../core/db/database.ts"
import { applyDeliveredToPostgres } from "../core/projection.ts"
import { makeKeys } from "../core/redis/keys.ts"
import { signingKey, Verifier } from "../core/signing.ts"
import { stackEnv } from "../core/testing/index.ts"
import { balancesProjection, registry } from "../test/fixtures/ledger.ts"

const [databaseUrl, keyPrefix, keyHex] = process.argv.slice(2) as [string, string, string]
const keys = makeKeys(keyPrefix)
const database = makeDatabase(makeKysely(databaseUrl, 4))
const redis = new Redis(stackEnv().REDIS_URL)
const projection = balancesProjection("projected", "projected")
const wallNow = () => performance.timeOrigin + performance.now()

// also when the batch reached this process, and each entry's XADD time (the ms part of its id)
const apply = async (events: ReadonlyArray<ReceivedEvent>) => {
  const read = wallNow()
  await applyDeliveredToPostgres(database.db, registry, projection, events.map((e) => e.envelope))
  const xadd = events.map((e) => Number(e.entryId.split("-")[0]))
  process.stdout.write(`${JSON.stringify({ at: wallNow(), read, ids: events.map((e) => e.envelope.id), xadd })}\n`)
}

const consumer = makeConsumer({
  redis, streams: [keys.stream("account")], group: "projection", registry, verifier: new Verifier([signingKey(Buffer.from(keyHex, "hex"))]),
  deadLetterStream: keys.deadLetters, count: 500, blockMs: 100,
  handle: (e) => apply([e]),
  handleBatch: apply
})
const running = consumer.run()
process.once("SIGTERM", () => {
  consumer.stop()
  void running.finally(async () => {
    redis.disconnect()
    await database.db.destroy()
    process.exit(0)
  })
})

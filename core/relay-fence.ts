// Fenced publishing. A relay publishes only under the leadership epoch it was given with its
// lease (relay-lease.ts). The lease lives in Postgres and the publish happens in Redis, so a
// Postgres check alone cannot stop a leader that stalled (GC, SIGSTOP, a slow network) past
// its lease and then wakes up mid-batch: the check is made where the write happens. A Lua
// script, atomic in Redis, compares the caller's epoch with the highest epoch recorded beside
// the stream and appends only if it is not lower; a successor's first publish raises the
// recorded epoch, and from then on the stale leader's appends to that stream are refused.
import type { Command, Redis } from "ioredis"
import { fenceKey } from "./redis/keys.ts"
import { dropArgs, utf8Command } from "./redis/command.ts"
import { isNoScript, scriptSha } from "./redis/script.ts"

// KEYS[1] stream, KEYS[2] its fence; ARGV[1] epoch, then per entry: field count, fields...
// Each XADD's failure is returned, not raised: a script error would drop the entries after it.
const SCRIPT = `
local epoch = tonumber(ARGV[1])
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch < seen then return redis.error_reply('FENCED epoch ' .. ARGV[1] .. ' is behind ' .. seen) end
if epoch > seen then redis.call('SET', KEYS[2], ARGV[1]) end
local out = {}
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  if type(reply) == 'table' and reply.err then out[#out + 1] = 'ERR ' .. reply.err else out[#out + 1] = reply end
  i = i + n + 1
end
return out
`

const SHA = scriptSha(SCRIPT)

/** Another leader has published to this stream under a later epoch: this relay has lost its lease. */
export const isFenced = (e: unknown) => e instanceof Error && e.message.startsWith("FENCED")

export interface FencedBatch {
  readonly stream: string
  readonly entries: ReadonlyArray<ReadonlyArray<string>>
}

export type FencedReply = [error: Error | null, reply: unknown]

/**
 * One fenced append per batch, in one pipeline. The reply for each batch, in batch order: an
 * array of entry ids or "ERR …" strings in entry order, or an error (FENCED for the whole
 * stream). Rejects when Redis does not answer.
 *
 * By EVALSHA, and by EVAL for the batches the server answered NOSCRIPT (after a restart or a
 * SCRIPT FLUSH; the EVALSHA did not run, so nothing is appended twice). The commands' arguments
 * — every entry of the batch — are dropped once they have answered: an ioredis command stays
 * reachable from an old-space closure until the next full collection (see redis/command.ts).
 */
export const publishFenced = async (redis: Redis, epoch: bigint, batches: ReadonlyArray<FencedBatch>): Promise<Array<FencedReply>> => {
  const argsOf = (batch: FencedBatch) => {
    const args: Array<string | number> = [2, batch.stream, fenceKey(batch.stream), epoch.toString()]
    for (const fields of batch.entries) args.push(String(fields.length), ...fields)
    return args
  }
  const send = async (name: "evalsha" | "eval", script: string, which: ReadonlyArray<number>) => {
    // ioredis's Pipeline has sendCommand (it queues the command); its chainable type does not say so
    const pipeline = redis.pipeline() as ReturnType<Redis["pipeline"]> & { sendCommand(command: Command): unknown }
    const commands = which.map((i) => utf8Command(name, [script, ...argsOf(batches[i]!)]))
    for (const c of commands) pipeline.sendCommand(c)
    try {
      return ((await pipeline.exec()) ?? []) as Array<FencedReply>
    } finally {
      dropArgs(commands)
    }
  }
  const all = batches.map((_, i) => i)
  const results = await send("evalsha", SHA, all)
  const unknown = all.filter((i) => isNoScript(results[i]?.[0]))
  if (unknown.length > 0) {
    const again = await send("eval", SCRIPT, unknown)
    unknown.forEach((i, j) => (results[i] = again[j]!))
  }
  return batches.map((_, i) => results[i] ?? [new Error("no reply"), null])
}

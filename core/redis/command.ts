// A Redis command on a hot path whose arguments are let go as soon as it has answered.
//
// ioredis assigns a function literal to a property of each command it makes (its reject
// wrapper), and V8 allocates a function written that way straight in old space. Until the next
// full collection that function keeps the command reachable, so minor collections copied and
// promoted each command's arguments — the gateway's and the sts's audit records, the relay's
// batches. Sending our own Command (ioredis's public API) lets us drop its arguments after the
// reply; what stays behind until the full collection is the small command object.
import { Command, type Redis } from "ioredis"
import type { Writable } from "node:stream"

const NO_ARGS: Array<string> = []

/** Lets go of commands' arguments once they have answered. */
export const dropArgs = (commands: ReadonlyArray<Command>) => {
  for (const c of commands) c.args = NO_ARGS
}

/** A command of `name` with `args`, answered as UTF-8 strings (as ioredis's own methods answer). */
export const utf8Command = (name: string, args: Array<string | number>) => new Command(name, args, { replyEncoding: "utf8" })

// Commands sent in one turn of the event loop leave in one write. Each write to a socket is a
// system call, and on loopback it also hands the bytes to Redis at once; on the machines we
// measure, that costs tens of microseconds — as much as the rest of a command's client work.
// So the first command of a turn corks the connection and the turn's end (setImmediate, after
// every I/O callback the poll phase delivered) uncorks it: the commands of every request
// handled in that turn are written together. Only a ready connection is corked (ioredis queues
// commands itself while it connects).
const corked = new WeakSet<Redis>()
const coalesceWrites = (redis: Redis) => {
  if (corked.has(redis) || redis.status !== "ready") return
  const stream = (redis as unknown as { stream?: Writable }).stream
  if (stream === undefined || stream.writableCorked > 0) return
  corked.add(redis)
  stream.cork()
  setImmediate(() => {
    corked.delete(redis)
    stream.uncork()
  })
}

/** Sends `name args…` and answers its reply, the arguments released once it has come. */
export const sendReleasing = async <A>(redis: Redis, name: string, args: Array<string | number>): Promise<A> => {
  const command = utf8Command(name, args)
  coalesceWrites(redis)
  try {
    return (await redis.sendCommand(command)) as A
  } finally {
    dropArgs([command])
  }
}

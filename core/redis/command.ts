// A Redis command on a hot path whose arguments are let go as soon as it has answered.
//
// ioredis assigns a function literal to a property of each command it makes (its reject
// wrapper), and V8 allocates a function written that way straight in old space. Until the next
// full collection that function keeps the command reachable, so minor collections copied and
// promoted each command's arguments — the gateway's and the sts's audit records, the relay's
// batches. Sending our own Command (ioredis's public API) lets us drop its arguments after the
// reply; what stays behind until the full collection is the small command object.
import { Command, type Redis } from "ioredis"

const NO_ARGS: Array<string> = []

/** Lets go of commands' arguments once they have answered. */
export const dropArgs = (commands: ReadonlyArray<Command>) => {
  for (const c of commands) c.args = NO_ARGS
}

/** A command of `name` with `args`, answered as UTF-8 strings (as ioredis's own methods answer). */
export const utf8Command = (name: string, args: Array<string | number>) => new Command(name, args, { replyEncoding: "utf8" })

/** Sends `name args…` and answers its reply, the arguments released once it has come. */
export const sendReleasing = async <A>(redis: Redis, name: string, args: Array<string | number>): Promise<A> => {
  const command = utf8Command(name, args)
  try {
    return (await redis.sendCommand(command)) as A
  } finally {
    dropArgs([command])
  }
}

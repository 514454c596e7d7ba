// A Lua script on a hot path: EVALSHA, and EVAL once when the server does not have the script
// (after a restart or a SCRIPT FLUSH), which also loads it for the next calls.
//
// Why not ioredis's defineCommand, and why the command's arguments are dropped once it has
// answered: ioredis assigns a function literal to a property of each command (its reject
// wrapper; defineCommand's script command adds a second one), and V8 allocates a function
// written that way straight in old space. Until the next full collection it keeps the
// command reachable, and minor collections copied and promoted each call's arguments — on the
// gateway, every allowed call's audit record. With the arguments dropped, what stays behind
// is the small command object itself.
// The relay's pipelined fenced append does the same (relay-fence.ts).
import { createHash } from "node:crypto"
import { Command, type Redis } from "ioredis"

/** The server does not have the script (EVALSHA did not run): send it with EVAL. */
export const isNoScript = (e: unknown) => e instanceof Error && e.message.startsWith("NOSCRIPT")

const NO_ARGS: Array<string> = []
/** Lets go of commands' arguments once they have answered (why: above). */
export const dropArgs = (commands: ReadonlyArray<Command>) => {
  for (const c of commands) c.args = NO_ARGS
}

const send = async <A>(redis: Redis, name: "evalsha" | "eval", script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => {
  const command = new Command(name, [script, keys.length, ...keys, ...args], { replyEncoding: "utf8" })
  try {
    return (await redis.sendCommand(command)) as A
  } finally {
    dropArgs([command])
  }
}

/** The SHA-1 EVALSHA names a script by. */
export const scriptSha = (lua: string) => createHash("sha1").update(lua).digest("hex")

export type LuaScript<A> = (redis: Redis, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => Promise<A>

/** A script with `keys.length` keys, run by its SHA-1. */
export const luaScript = <A>(lua: string): LuaScript<A> => {
  const sha = scriptSha(lua)
  return (redis, keys, args) =>
    send<A>(redis, "evalsha", sha, keys, args).catch((e: unknown) => isNoScript(e) ? send<A>(redis, "eval", lua, keys, args) : Promise.reject(e))
}

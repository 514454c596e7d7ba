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
// Pipelines keep defineCommand (relay-fence.ts): one script call per batch, not per request.
import { createHash } from "node:crypto"
import { Command, type Redis } from "ioredis"

const isNoScript = (e: unknown) => e instanceof Error && e.message.startsWith("NOSCRIPT")

const NO_ARGS: Array<string> = []

const send = async <A>(redis: Redis, name: "evalsha" | "eval", script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => {
  const command = new Command(name, [script, keys.length, ...keys, ...args], { replyEncoding: "utf8" })
  try {
    return (await redis.sendCommand(command)) as A
  } finally {
    command.args = NO_ARGS
  }
}

export type LuaScript<A> = (redis: Redis, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => Promise<A>

/** A script with `keys.length` keys, run by its SHA-1. */
export const luaScript = <A>(lua: string): LuaScript<A> => {
  const sha = createHash("sha1").update(lua).digest("hex")
  return (redis, keys, args) =>
    send<A>(redis, "evalsha", sha, keys, args).catch((e: unknown) => isNoScript(e) ? send<A>(redis, "eval", lua, keys, args) : Promise.reject(e))
}

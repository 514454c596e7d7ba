// The `caracal` command: effect/cli parses the arguments and each handler opens the
// connections it needs for the length of the command, so the process exits when the
// command is done. The work itself lives in plain async functions (one module per group).
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Effect, Option } from "effect"
import { Argument, CliError, Command, Flag } from "effect/cli"
import type { Redis } from "ioredis"
import type { Kysely } from "kysely"
import { readFileSync } from "node:fs"
import path from "node:path"
import { ConfigInvalid } from "../core/config/load.ts"
import type { Tables } from "../core/db/tables.ts"
import { events as registry } from "../services/events.ts"
import { auditCommand } from "./audit.ts"
import { clientCommands } from "./client-commands.ts"
import { ClientConfigError, loadEnvFile } from "./client-config.ts"
import { printLag } from "./consumers.ts"
import { printDeadLetters, runRequeueDeadLetter, showDeadLetter } from "./dlq.ts"
import { type CliEnv, loadCliEnv, openDatabase, openRedis } from "./env.ts"
import { replayEvents, tailEvents } from "./events.ts"
import { printDead, runRequeue } from "./outbox.ts"
import { type Out, UsageError } from "./output.ts"
import { findProjection, rebuildProjection } from "./projections.ts"

const out: Out = (line) => void process.stdout.write(`${line}\n`)

/** What the operator reads when a command fails: the message, never a stack trace. */
export const messageOf = (e: unknown): string => {
  if (e instanceof UsageError || e instanceof ConfigInvalid || e instanceof ClientConfigError) return e.message
  // Node reports a refused connection to a dual-stack host as an AggregateError with an empty message
  if (e instanceof AggregateError && e.message === "") return e.errors.map(messageOf).join("; ")
  if (e instanceof Error) return e.message || (e as { code?: string }).code || e.name
  return String(e)
}

const fail = (e: unknown) => new CliError.UserError({ cause: e, userMessage: messageOf(e) })

const attempt = <A>(f: (signal: AbortSignal) => Promise<A>) => Effect.tryPromise({ try: f, catch: fail })

/** What a command needs opened; "redis-if-verifying" reads streams only to check signatures. */
type Need = "db" | "redis" | "redis-if-verifying"

type Opened<K extends Need> =
  & { readonly env: CliEnv }
  & ("db" extends K ? { readonly db: Kysely<Tables> } : unknown)
  & ("redis" extends K ? { readonly redis: Redis } : unknown)
  & ("redis-if-verifying" extends K ? { readonly redis: Redis | undefined } : unknown)

/** Opens what a command needs and closes it when the command ends, fails or is interrupted. */
const using = <K extends Need, A>(needs: ReadonlyArray<K>, f: (c: Opened<K>, signal: AbortSignal) => Promise<A>) =>
  Effect.scoped(
    Effect.gen(function*() {
      const env = yield* Effect.mapError(loadCliEnv, fail)
      const has = (n: Need) => (needs as ReadonlyArray<Need>).includes(n)
      const db = has("db") ? yield* openDatabase(env) : undefined
      const redis = has("redis") || (has("redis-if-verifying") && env.verifier.enabled)
        ? yield* Effect.mapError(openRedis(env), fail)
        : undefined
      return yield* attempt((signal) => f({ env, db, redis } as unknown as Opened<K>, signal))
    })
  )

const json = Flag.Boolean("json").pipe(Flag.withDefault(false), Flag.withDescription("one JSON object per line"))
const streams = (what: string) => Flag.String("stream").pipe(Flag.atLeast(0), Flag.withDescription(what))
const optionalString = (name: string, description: string) =>
  Flag.String(name).pipe(Flag.optional, Flag.map(Option.getOrUndefined), Flag.withDescription(description))

// ------------------------------------------------------------------ events

const tail = Command.make("tail", {
  streams: streams("stream to read (repeatable); default: every <prefix>:*:events stream"),
  count: Flag.Int("count").pipe(Flag.withDefault(20), Flag.withDescription("entries per stream")),
  follow: Flag.Boolean("follow").pipe(Flag.withDefault(false), Flag.withDescription("then print new entries until interrupted")),
  forMs: Flag.Int("for-ms").pipe(Flag.optional, Flag.map(Option.getOrUndefined), Flag.withDescription("with --follow: stop after this many ms")),
  json
}, (o) =>
  using(["redis"], ({ env, redis }, signal) => {
    if (o.forMs !== undefined && (!o.follow || o.forMs < 1)) throw new UsageError("--for-ms needs --follow and a positive value")
    const follow = !o.follow ? undefined : o.forMs === undefined ? signal : AbortSignal.any([signal, AbortSignal.timeout(o.forMs)])
    return tailEvents({ redis, verifier: env.verifier, prefix: env.prefix, out }, { streams: o.streams, count: o.count, json: o.json, follow })
  })).pipe(Command.withDescription("the newest entries of the event streams, with their signature status"))

const replay = Command.make("replay", {
  zone: optionalString("zone", "only this zone"),
  aggregate: optionalString("aggregate", "TYPE or TYPE/ID"),
  types: Flag.String("type").pipe(Flag.atLeast(0), Flag.withDescription("only this event type (repeatable)")),
  from: optionalString("from", "first log position"),
  to: optionalString("to", "last log position"),
  json
}, (o) =>
  using(["db", "redis-if-verifying"], ({ env, db, redis }) =>
    replayEvents({ db, redis, verifier: env.verifier, prefix: env.prefix, out }, o))).pipe(
    Command.withDescription("events from the Postgres log in commit order, each checked against its stream entry")
  )

const eventsCommand = Command.make("events").pipe(
  Command.withDescription("read the event streams and the event log"),
  Command.withSubcommands([tail, replay])
)

// ------------------------------------------------------------------ outbox

const dead = Command.make("dead", {
  producer: optionalString("producer", "only this producer's rows"),
  requeue: Flag.String("requeue").pipe(Flag.atLeast(0), Flag.withDescription("re-queue this dead row (repeatable), or all of --producer's")),
  json
}, (o) =>
  using(["db"], ({ db }) =>
    o.requeue.length > 0
      ? runRequeue(db, out, { values: o.requeue, producer: o.producer, json: o.json })
      : printDead(db, out, o))).pipe(Command.withDescription("outbox rows the relay gave up on, and re-queueing them"))

const outboxCommand = Command.make("outbox").pipe(Command.withDescription("the transactional outbox"), Command.withSubcommands([dead]))

// ------------------------------------------------------------------ dlq

const dlqStream = optionalString("stream", "the event stream or its :dlq stream; default: every <prefix>:*:dlq stream")
const entryId = Argument.String("entry-id").pipe(Argument.withDescription("the dead letter's entry id"))

const dlqList = Command.make("list", { stream: dlqStream, json }, (o) =>
  using(["redis"], ({ env, redis }) => printDeadLetters({ redis, prefix: env.prefix, out }, o))).pipe(
    Command.withDescription("dead letters with their reasons")
  )

const dlqShow = Command.make("show", { entryId, stream: dlqStream, json }, (o) =>
  using(["redis"], ({ env, redis }) => showDeadLetter({ redis, prefix: env.prefix, out }, o.entryId, o))).pipe(
    Command.withDescription("one dead letter with the original entry decoded")
  )

const dlqRequeue = Command.make("requeue", { entryId, stream: dlqStream, json }, (o) =>
  using(["redis"], ({ env, redis }) => runRequeueDeadLetter({ redis, prefix: env.prefix, out }, o.entryId, o))).pipe(
    Command.withDescription("put a dead letter back on its original stream")
  )

const dlqCommand = Command.make("dlq").pipe(
  Command.withDescription("dead-letter streams"),
  Command.withSubcommands([dlqList, dlqShow, dlqRequeue])
)

// ------------------------------------------------------------------ projections

const rebuild = Command.make("rebuild", { name: Argument.String("name").pipe(Argument.withDescription("the projection")) }, (o) =>
  using(["db"], ({ env, db }) => {
    const projection = findProjection(o.name)
    return rebuildProjection({ db, registry, out, verifier: env.verifier, progress: (chunk) => void process.stderr.write(chunk) }, projection)
  })).pipe(Command.withDescription("drop a Postgres projection and replay the log into it"))

const projectionsCommand = Command.make("projections").pipe(
  Command.withDescription("read models"),
  Command.withSubcommands([rebuild])
)

// ------------------------------------------------------------------ consumers

const lag = Command.make("lag", { streams: streams("stream (repeatable); default: every <prefix>:*:events stream"), json }, (o) =>
  using(["redis"], ({ env, redis }) => printLag({ redis, prefix: env.prefix, out }, o))).pipe(
    Command.withDescription("per stream and group: consumers, pending, lag, oldest pending age")
  )

const consumersCommand = Command.make("consumers").pipe(Command.withDescription("consumer groups"), Command.withSubcommands([lag]))

export const caracal = Command.make("caracal").pipe(
  Command.withDescription("the Caracal command line: run with mandates, administer zones, govern agents, operate the event backbone"),
  Command.withSubcommands([
    ...clientCommands,
    eventsCommand, outboxCommand, dlqCommand, projectionsCommand, consumersCommand, auditCommand((f) => attempt(f))
  ])
)

const version = (JSON.parse(readFileSync(path.join(import.meta.dirname, "../package.json"), "utf8")) as { version: string }).version

export const runCli = (argv: ReadonlyArray<string>) =>
  Effect.suspend(() => {
    // the .env (CARACAL_ENV_FILE or ./.env) is read before any command reads a variable
    try {
      loadEnvFile()
    } catch (e) {
      process.stderr.write(`${messageOf(e)}\n`)
      process.exit(2)
    }
    return Command.runWith(caracal, { version })(argv)
  })

/** The process entry: `node cli/main.ts …`, or the `caracal` bin (cli/caracal.mjs) importing this module. */
export const main = (argv: ReadonlyArray<string>) => runCli(argv).pipe(Effect.provide(NodeServices.layer), NodeRuntime.runMain)

if (import.meta.main) main(process.argv.slice(2))

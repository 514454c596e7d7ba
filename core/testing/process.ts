// Services under test run as real processes (node services/<name>/main.ts) on a free
// loopback port, exactly as in production apart from their environment.
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import net from "node:net"
import path from "node:path"
import { repoRoot } from "./stack.ts"

export const nodeBinary = (): string => {
  const pinned = path.join(repoRoot, "node_modules/.bin/node")
  return existsSync(pinned) ? pinned : process.execPath
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address()
      const port = typeof addr === "object" && addr ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })

export const waitFor = async (probe: () => Promise<boolean>, timeoutMs: number, intervalMs = 50): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await probe()) return
    await new Promise((r) => setTimeout(r, intervalMs))
  }
  throw new Error(`condition not met within ${timeoutMs} ms`)
}

const canConnect = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" })
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

export interface RunningService {
  readonly url: string
  readonly port: number
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Sends the signal and resolves with the exit code (or the signal name). */
  readonly stop: (signal?: NodeJS.Signals) => Promise<number | string>
}

// Children still running when this process exits (a benchmark or test that threw before its
// cleanup) are killed with it: an orphaned service would go on consuming, relaying and taking
// CPU from every later measurement on the machine.
const running = new Set<ChildProcess>()
let reaping = false
const reapOnExit = () => {
  if (reaping) return
  reaping = true
  process.once("exit", () => {
    for (const child of running) child.kill("SIGKILL")
  })
}

/** Runs a TypeScript entry point of this repository (a service, the CLI) as its own process. */
export const spawnScript = (script: string, args: ReadonlyArray<string>, env: Record<string, string>) => {
  const child = spawn(nodeBinary(), [path.join(repoRoot, script), ...args], {
    cwd: repoRoot,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  running.add(child)
  child.once("exit", () => running.delete(child))
  reapOnExit()
  let out = ""
  let err = ""
  child.stdout.on("data", (b: Buffer) => (out += b.toString()))
  child.stderr.on("data", (b: Buffer) => (err += b.toString()))
  const exited = new Promise<number | string>((resolve) =>
    child.once("exit", (code, signal) => resolve(code ?? signal ?? "unknown")))
  return { child, stdout: () => out, stderr: () => err, exited }
}

/** Runs a script to its end (killed after `timeoutMs`): exit code or signal, and its output. */
export const runScript = async (script: string, args: ReadonlyArray<string>, env: Record<string, string>, timeoutMs = 20_000) => {
  const p = spawnScript(script, args, env)
  const timer = setTimeout(() => p.child.kill("SIGKILL"), timeoutMs)
  const code = await p.exited
  clearTimeout(timer)
  return { code, stdout: p.stdout(), stderr: p.stderr() }
}

const launch = (service: string, env: Record<string, string>) => spawnScript(`services/${service}/main.ts`, [], env)

/** Runs a service that is expected to stop by itself (e.g. refuse its configuration). */
export const runToExit = (service: string, env: Record<string, string>, timeoutMs = 20_000) =>
  runScript(`services/${service}/main.ts`, [], env, timeoutMs)

/** Starts a service on a free port and waits until it accepts connections. */
export const startService = async (
  service: string,
  env: Record<string, string>,
  opts: { readonly tls?: boolean; readonly timeoutMs?: number } = {}
): Promise<RunningService> => {
  const port = env.PORT ? Number(env.PORT) : await freePort()
  const p = launch(service, { HOST: "127.0.0.1", ...env, PORT: String(port) })
  let exit: number | string | undefined
  void p.exited.then((c) => (exit = c))
  await waitFor(async () => {
    if (exit !== undefined) throw new Error(`${service} exited (${exit}) before listening:\n${p.stderr()}\n${p.stdout()}`)
    return canConnect(port)
  }, opts.timeoutMs ?? 30_000).catch((e) => {
    p.child.kill("SIGKILL")
    throw e
  })
  return {
    url: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}`,
    port,
    child: p.child,
    stdout: p.stdout,
    stderr: p.stderr,
    stop: (signal = "SIGTERM") => {
      if (exit === undefined) p.child.kill(signal)
      return p.exited
    }
  }
}

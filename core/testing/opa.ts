// A private OPA for tests that stop, freeze or empty it: the binary infra/stack.sh built
// (on the PATH, or in GOPATH/bin), on a port of the test's choosing.
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import path from "node:path"
import { waitFor } from "./process.ts"

export const opaBinary = (): string => {
  for (const dir of (process.env.PATH ?? "").split(":")) if (dir && existsSync(path.join(dir, "opa"))) return path.join(dir, "opa")
  try {
    const gopath = execFileSync("go", ["env", "GOPATH"], { encoding: "utf8" }).trim()
    if (existsSync(path.join(gopath, "bin/opa"))) return path.join(gopath, "bin/opa")
  } catch {
    // no go on the PATH: try the usual place
  }
  return path.join(process.env.HOME ?? "/root", "go/bin/opa")
}

export interface PrivateOpa {
  readonly url: string
  readonly port: number
  child: ChildProcess
}

export const opaHealthy = async (url: string) => {
  try {
    return (await fetch(`${url}/health`, { signal: AbortSignal.timeout(1_000) })).status === 200
  } catch {
    return false
  }
}

/** An empty OPA server on 127.0.0.1:port, once it answers /health. */
export const startOpa = async (port: number): Promise<PrivateOpa> => {
  const child = spawn(opaBinary(), ["run", "--server", "--addr", `127.0.0.1:${port}`, "--log-level", "error"], { stdio: "ignore" })
  const url = `http://127.0.0.1:${port}`
  await waitFor(() => opaHealthy(url), 30_000)
  return { url, port, child }
}

export const stopOpa = async (opa: PrivateOpa) => {
  if (opa.child.exitCode !== null || opa.child.signalCode !== null) return
  const exited = new Promise((r) => opa.child.once("exit", r))
  opa.child.kill("SIGKILL")
  await exited
}

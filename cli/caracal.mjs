#!/usr/bin/env node
// The `caracal` bin (npx caracal). The CLI is TypeScript: a Node that strips types
// (22.18+, 23.6+) imports it in this process; an older one hands over to the Node 24 this
// repository pins (node_modules/.bin/node), passing signals on and exiting as it exits.
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

const here = path.dirname(fileURLToPath(import.meta.url))
const [major, minor] = process.versions.node.split(".").map(Number)
const stripsTypes = major > 23 || (major === 23 && minor >= 6) || (major === 22 && minor >= 18)

if (stripsTypes) {
  const { main } = await import("./main.ts")
  main(process.argv.slice(2))
} else {
  const pinned = path.join(here, "..", "node_modules", ".bin", "node")
  if (!existsSync(pinned)) {
    process.stderr.write(`caracal needs Node 22.18 or later (this is ${process.version}); run npm ci in ${path.dirname(here)}\n`)
    process.exit(2)
  }
  const child = spawn(pinned, [path.join(here, "main.ts"), ...process.argv.slice(2)], { stdio: "inherit" })
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"]) process.on(s, () => child.kill(s))
  child.on("exit", (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal)
      process.kill(process.pid, signal)
    }
    process.exit(code ?? 1)
  })
}

// A sequential HTTP client in its own small process, so the latencies it reports are the
// server's and the loopback's, not the pauses of a benchmark process that holds a large
// heap (its collections land on whichever request is in flight). Rounds alternate between
// the URLs, so each sees the same moments of the machine's noise.
// Usage: latency-client.ts <rounds> <per round> <warm-up> <header:value|-> <url>...
// Prints one JSON line: { "<url>": [sorted milliseconds], ... }.
import http from "node:http"
import { keepAliveAgent } from "../core/http/agents.ts"

const [rounds, perRound, warm, header, ...urls] = process.argv.slice(2)
const agent = keepAliveAgent({ maxSockets: 1 })
const headers: Record<string, string> = {}
if (header !== undefined && header !== "-") {
  const at = header.indexOf(":")
  headers[header.slice(0, at)] = header.slice(at + 1)
}

const once = (url: string) =>
  new Promise<number>((resolve, reject) => {
    const start = performance.now()
    http.get(url, { agent, headers }, (res) => {
      res.on("data", () => undefined)
      res.on("end", () => (res.statusCode === 200 ? resolve(performance.now() - start) : reject(new Error(`${url}: ${res.statusCode}`))))
    }).on("error", reject)
  })

const out: Record<string, Array<number>> = Object.fromEntries(urls.map((u) => [u, []]))
for (const u of urls) for (let i = 0; i < Number(warm); i++) await once(u)
for (let r = 0; r < Number(rounds); r++) {
  for (const u of urls) for (let i = 0; i < Number(perRound); i++) out[u]!.push(await once(u))
}
for (const u of urls) out[u]!.sort((a, b) => a - b)
process.stdout.write(`${JSON.stringify(out)}\n`)
agent.destroy()

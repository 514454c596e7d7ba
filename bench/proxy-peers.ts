// The gateway benchmark's other processes, each on its own port: `upstream <port>` answers
// every request with a small JSON body (and /events with an endless event stream), and
// `bare <port> <upstream port>` is the ceiling: a plain Node reverse proxy with the same
// keep-alive pool, no checks. Run apart from the load generator so that they do not share
// its event loop — as the gateway does not.
import http from "node:http"
import { keepAliveAgent } from "../core/http/agents.ts"
import { pipeline } from "node:stream"

const [role, portArg, upstreamArg] = process.argv.slice(2)
const port = Number(portArg)

if (role === "upstream") {
  const body = JSON.stringify({ ok: true, items: [1, 2, 3] })
  http.createServer((req, res) => {
    if (req.url?.startsWith("/events")) {
      res.writeHead(200, { "content-type": "text/event-stream" })
      const timer = setInterval(() => res.write("data: tick\n\n"), 10)
      res.on("close", () => clearInterval(timer))
      return
    }
    req.resume()
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
      res.end(body)
    })
  }).listen(port, "127.0.0.1")
} else if (role === "bare") {
  const agent = keepAliveAgent({ maxSockets: 256, maxFreeSockets: 64, scheduling: "lifo" })
  http.createServer((req, res) => {
    const up = http.request({ host: "127.0.0.1", port: Number(upstreamArg), path: req.url, method: req.method, headers: req.headers, agent }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers)
      pipeline(r, res, () => {})
    })
    up.on("error", () => {
      res.writeHead(502)
      res.end()
    })
    pipeline(req, up, () => {})
  }).listen(port, "127.0.0.1")
} else {
  process.stderr.write("usage: proxy-peers.ts upstream <port> | bare <port> <upstream port>\n")
  process.exit(2)
}

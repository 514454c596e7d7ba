// Outgoing keep-alive pools (core/http/agents.ts) drop an idle socket before the server's
// announced keep-alive timeout, so that no request is written on a socket the server is
// closing (ECONNRESET, a 502 at the gateway for a call its upstream never saw); within that
// time a socket is reused. A real server on loopback, counting its connections.
import http from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { keepAliveAgent } from "../../core/http/agents.ts"

let server: http.Server
let connections = 0
let port = 0

beforeAll(async () => {
  server = http.createServer((_req, res) => res.end("ok"))
  // Node announces `Keep-Alive: timeout=2` and closes an idle socket after 2 s
  server.keepAliveTimeout = 2000
  server.on("connection", () => connections++)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  port = (server.address() as AddressInfo).port
})
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())))

const get = (agent: http.Agent) =>
  new Promise<string | undefined>((resolve, reject) => {
    http.get({ host: "127.0.0.1", port, agent }, (res) => {
      res.resume()
      const hint = res.headers["keep-alive"]
      res.on("end", () => resolve(typeof hint === "string" ? hint : undefined))
    }).on("error", reject)
  })
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const free = (agent: http.Agent) => Object.values(agent.freeSockets).flat().length

describe("an outgoing keep-alive pool", () => {
  it("reuses an idle socket within the server's announced timeout and drops it a second before", async () => {
    const agent = keepAliveAgent()
    try {
      const before = connections
      expect(await get(agent)).toBe("timeout=2")
      await sleep(300)
      await get(agent)
      expect(connections - before).toBe(1)
      // 1.4 s idle: past the announced 2 s less a second, before the server closes it
      await sleep(1400)
      expect(free(agent)).toBe(0)
      await get(agent)
      expect(connections - before).toBe(2)
    } finally {
      agent.destroy()
    }
  })

  it("(the control) a plain keep-alive Agent still holds the socket the server is about to close", async () => {
    const agent = new http.Agent({ keepAlive: true })
    try {
      await get(agent)
      await sleep(1400)
      expect(free(agent)).toBe(1)
    } finally {
      agent.destroy()
    }
  })
})

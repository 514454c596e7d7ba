// Keep-alive pools for outgoing HTTP(S) calls (the gateway's upstreams, the sts's OPA client,
// the benchmarks' clients).
//
// Node's Agent honours a server's `Keep-Alive: timeout=N` hint only when the agent has a
// `timeout` of its own: it then drops an idle socket a second before the server closes it.
// Without one it keeps the socket until the server closes it, and a request written on it in
// that moment fails with ECONNRESET ("socket hang up") before the server has read it — a
// governed call answered 502 for a request its upstream never saw.
import http from "node:http"
import https from "node:https"

/** Idle sockets of a server that announces no keep-alive timeout are dropped after this long. */
export const IDLE_SOCKET_MS = 30_000

type AgentOptions = Omit<http.AgentOptions, "keepAlive" | "timeout">

export const keepAliveAgent = (opts: AgentOptions = {}): http.Agent => new http.Agent({ ...opts, keepAlive: true, timeout: IDLE_SOCKET_MS })

export const keepAliveHttpsAgent = (opts: AgentOptions & https.AgentOptions = {}): https.Agent =>
  new https.Agent({ ...opts, keepAlive: true, timeout: IDLE_SOCKET_MS })

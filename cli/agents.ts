// `caracal agents …` and `caracal delegations …`: the coordinator's sessions and edges,
// with CARACAL_COORDINATOR_TOKEN (an ambient mandate with agent:lifecycle) — or, when it
// is not set, a mandate obtained with caracal.toml's application secret.
import { type AgentSessionView, CoordinatorClient, type DelegationView } from "../sdk/src/coordinator.ts"
import { call } from "../sdk/src/http.ts"
import { ClientConfigError, type ClientEnv } from "./client-config.ts"
import { type Out, printRows, UsageError } from "./output.ts"
import { printRecord } from "./admin.ts"
import { tokenUrlOf } from "./run.ts"

export interface AgentsContext {
  readonly env: ClientEnv
  readonly out: Out
  readonly json: boolean
  readonly zone: string | undefined
}

const tokenOf = async (env: ClientEnv): Promise<string> => {
  if (env.coordinatorToken !== undefined) return env.coordinatorToken
  const t = env.toml
  if (t === undefined) throw new ClientConfigError("CARACAL_COORDINATOR_TOKEN is not set (and no caracal.toml to obtain a mandate with)")
  const r = await call<{ access_token: string }>({
    service: "sts",
    method: "POST",
    url: tokenUrlOf(t, env.stsUrl),
    form: new URLSearchParams({ grant_type: "client_credentials", zone_id: t.zoneId, application_id: t.applicationId, client_secret: t.appClientSecret, scope: "agent:lifecycle" }),
    idempotent: false
  })
  return r.body.access_token
}

const session = async (c: AgentsContext) => {
  if (c.zone === undefined) throw new UsageError("pass --zone, or set CARACAL_ZONE_ID (or zone_id in caracal.toml)")
  return { zone: c.zone, client: new CoordinatorClient({ baseUrl: c.env.coordinatorUrl }), auth: { token: await tokenOf(c.env) } }
}

const sessionColumns = [
  { header: "ID", value: (s: AgentSessionView) => s.id },
  { header: "APPLICATION", value: (s: AgentSessionView) => s.application_id },
  { header: "KIND", value: (s: AgentSessionView) => s.kind },
  { header: "STATUS", value: (s: AgentSessionView) => s.status },
  { header: "DEPTH", value: (s: AgentSessionView) => s.depth },
  { header: "PARENT", value: (s: AgentSessionView) => s.parent_id },
  { header: "EXPIRES", value: (s: AgentSessionView) => s.expires_at }
]

const edgeColumns = [
  { header: "ID", value: (d: DelegationView) => d.id },
  { header: "SOURCE", value: (d: DelegationView) => d.source_session_id },
  { header: "TARGET", value: (d: DelegationView) => d.target_session_id },
  { header: "RECEIVER", value: (d: DelegationView) => d.receiver_application_id },
  { header: "SCOPES", value: (d: DelegationView) => d.scopes.join(" ") },
  { header: "STATUS", value: (d: DelegationView) => d.status },
  { header: "EXPIRES", value: (d: DelegationView) => d.expires_at }
]

/**
 * Draws nodes as a tree (├─ └─ │), children under their parent in the given order; a
 * node whose parent is not in the list is a root.
 */
export const drawTree = <N>(nodes: ReadonlyArray<N>, id: (n: N) => string, parent: (n: N) => string | null, label: (n: N) => string): Array<string> => {
  const ids = new Set(nodes.map(id))
  const kids = new Map<string, Array<N>>()
  const roots: Array<N> = []
  for (const n of nodes) {
    const p = parent(n)
    if (p === null || !ids.has(p)) roots.push(n)
    else kids.set(p, [...(kids.get(p) ?? []), n])
  }
  const lines: Array<string> = []
  const walk = (n: N, lead: string, last: boolean, top: boolean) => {
    lines.push(top ? label(n) : `${lead}${last ? "└─ " : "├─ "}${label(n)}`)
    const children = kids.get(id(n)) ?? []
    const next = top ? "" : `${lead}${last ? "   " : "│  "}`
    children.forEach((c, i) => walk(c, next, i === children.length - 1, false))
  }
  for (const r of roots) walk(r, "", true, true)
  return lines
}

export const agentsList = async (c: AgentsContext, o: { application?: string | undefined; status?: string | undefined; limit: number; all: boolean }) => {
  const s = await session(c)
  const items: Array<AgentSessionView> = []
  let cursor: string | undefined
  do {
    const page = await s.client.list(s.zone, { applicationId: o.application, status: o.status, limit: o.limit, ...(cursor ? { cursor } : {}) }, s.auth)
    items.push(...page.items)
    cursor = page.next_cursor ?? undefined
  } while (o.all && cursor !== undefined)
  printRows(c.out, items, { json: c.json, columns: sessionColumns, toJson: (x) => x, empty: "no agent sessions" })
  if (cursor !== undefined && !c.json) c.out("(more: --all)")
}

export const agentsGet = async (c: AgentsContext, id: string) => {
  const s = await session(c)
  printRecord(c.out, c.json, { ...(await s.client.get(s.zone, id, s.auth)) })
}

export const agentsTree = async (c: AgentsContext, id: string) => {
  const s = await session(c)
  const items = await s.client.tree(s.zone, id, s.auth)
  if (c.json) return items.forEach((x) => c.out(JSON.stringify(x)))
  const label = (n: AgentSessionView) => `${n.id}  ${n.kind}  ${n.status}${n.end_reason ? ` (${n.end_reason})` : ""}  app ${n.application_id}`
  for (const l of drawTree(items, (n) => n.id, (n) => n.parent_id, label)) c.out(l)
}

export const agentsAction = async (c: AgentsContext, action: "suspend" | "resume" | "terminate", id: string, reason?: string) => {
  const s = await session(c)
  const after = action === "terminate" ? await s.client.terminate(s.zone, id, reason, s.auth) : await s.client[action](s.zone, id, s.auth)
  if (c.json) return c.out(JSON.stringify(after))
  c.out(`agent ${id}: ${after.status}${action === "terminate" ? " (with its subtree)" : ""}`)
}

export const delegationsList = async (c: AgentsContext, agent: string, direction: string | undefined) => {
  if (direction !== undefined && direction !== "inbound" && direction !== "outbound") throw new UsageError("--direction must be inbound or outbound")
  const s = await session(c)
  const both = await s.client.delegationsOf(s.zone, agent, s.auth)
  const rows = [
    ...(direction !== "outbound" ? both.inbound.map((d) => ({ ...d, direction: "inbound" })) : []),
    ...(direction !== "inbound" ? both.outbound.map((d) => ({ ...d, direction: "outbound" })) : [])
  ]
  printRows(c.out, rows, {
    json: c.json,
    columns: [{ header: "DIRECTION", value: (d) => d.direction }, ...edgeColumns],
    toJson: (x) => x,
    empty: "no delegations"
  })
}

export const delegationsGet = async (c: AgentsContext, id: string) => {
  const s = await session(c)
  printRecord(c.out, c.json, { ...(await s.client.getDelegation(s.zone, id, s.auth)) })
}

export const delegationsTraverse = async (c: AgentsContext, id: string) => {
  const s = await session(c)
  const items = await s.client.traverse(s.zone, id, s.auth)
  if (c.json) return items.forEach((x) => c.out(JSON.stringify(x)))
  const label = (d: DelegationView) => `${d.id}  ${d.source_session_id} → ${d.target_session_id}  [${d.scopes.join(" ")}]  ${d.status}`
  for (const l of drawTree(items, (d) => d.id, (d) => d.parent_edge_id, label)) c.out(l)
}

export const delegationsRevoke = async (c: AgentsContext, id: string, reason: string | undefined) => {
  const s = await session(c)
  const after = await s.client.revokeDelegation(s.zone, id, reason, s.auth)
  if (c.json) return c.out(JSON.stringify(after))
  c.out(`delegation ${id}: ${after.status} (with every edge downstream)`)
}

// The OpenAPI 3.1 document of the api, built from the route list itself (routes.ts): each
// route's method, path, summary, query parameters and body schema (the one it validates
// with), so the document cannot drift from what the api serves.
import { Schema } from "effect"
import type { RouteSpec } from "./route-kit.ts"

const ERROR = {
  type: "object",
  required: ["error"],
  properties: {
    error: { type: "string", description: "stable code" },
    error_description: { type: "string" },
    issues: { type: "array", items: { type: "object", properties: { path: { type: "string" }, message: { type: "string" } } } }
  }
}

const errors = (admin: boolean) => ({
  "400": { description: "invalid_request (with issues)", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } },
  ...(admin
    ? {
      "401": { description: "invalid_admin_token", content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } },
      "429": { description: "too many failed authentications from this address (Retry-After)" }
    }
    : {}),
  "404": { description: "<thing>_not_found" },
  "409": { description: "conflict (duplicate identifier, archived record)" },
  "412": { description: "precondition_failed: If-Match is stale" },
  "415": { description: "unsupported_media_type: JSON only" },
  "422": { description: "idempotency_key_reused, invalid_policy" },
  "503": { description: "temporarily_unavailable" }
})

export const openApiDocument = (routes: ReadonlyArray<RouteSpec>, version: string) => {
  const paths: Record<string, Record<string, unknown>> = {}
  const schemas: Record<string, unknown> = { Error: ERROR }
  for (const r of routes) {
    const params = [...r.path.matchAll(/\{([a-z_]+)\}/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: { type: "string" } }))
    const query = (r.query ?? []).map((q) => ({ name: q.name, in: "query", required: false, description: q.description, schema: { type: "string" } }))
    const headers = [
      ...(r.method === "POST" ? [{ name: "Idempotency-Key", in: "header", required: false, schema: { type: "string", maxLength: 200 } }] : []),
      ...(r.method === "PATCH" || r.method === "DELETE" ? [{ name: "If-Match", in: "header", required: false, schema: { type: "string" } }] : [])
    ]
    let requestBody: unknown
    if (r.body !== undefined) {
      const doc = Schema.toJsonSchemaDocument(r.body as Schema.Top)
      Object.assign(schemas, doc.definitions ?? {})
      requestBody = { required: r.method !== "DELETE", content: { "application/json": { schema: doc.schema } } }
    }
    const operation = {
      tags: [r.tag],
      summary: r.summary,
      operationId: `${r.method.toLowerCase()}${r.path.replace(/\{([a-z_]+)\}/g, "By_$1").replace(/[^A-Za-z0-9]+(.)?/g, (_, c: string | undefined) => (c ?? "").toUpperCase())}`,
      parameters: [...params, ...query, ...headers],
      ...(requestBody === undefined ? {} : { requestBody }),
      ...(r.admin === false ? { security: [] } : {}),
      responses: { [String(r.status)]: { description: "success" }, ...errors(r.admin !== false) }
    }
    ;(paths[r.path] ??= {})[r.method.toLowerCase()] = operation
  }
  return {
    openapi: "3.1.0",
    info: { title: "Caracal api", version, description: "The control plane: zones, applications, resources, providers, credentials, bindings, policies, grants." },
    servers: [{ url: "/" }],
    security: [{ admin: [] }],
    components: { securitySchemes: { admin: { type: "http", scheme: "bearer", description: "ADMIN_TOKEN" } }, schemas },
    paths
  }
}

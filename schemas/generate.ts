// Renders the JSON Schema documents of the envelope and of every event version of a registry.
// `npm run schemas` writes them, for all services' events (services/events.ts), to schemas/json/;
// a test fails when the checked-in files are stale.
import { Schema } from "effect"
import { Envelope } from "./envelope.ts"
import type { EventRegistry } from "./registry.ts"

// A standalone JSON Schema (2020-12) file: the document's schema with its definitions as $defs.
const render = (schema: Schema.Top, title: string) => {
  const doc = Schema.toJsonSchemaDocument(schema)
  const defs = doc.definitions && Object.keys(doc.definitions).length > 0 ? { $defs: doc.definitions } : {}
  const out = { $schema: "https://json-schema.org/draft/2020-12/schema", title, ...doc.schema, ...defs }
  return `${JSON.stringify(out, null, 2)}\n`
}

/** File name (relative to schemas/json) → contents. */
export const jsonSchemaFilesOf = (registry: EventRegistry): Map<string, string> => {
  const files = new Map<string, string>([["envelope.schema.json", render(Envelope, "Caracal event envelope")]])
  for (const type of registry.types()) {
    for (const v of registry.versions(type)) files.set(`events/${type}.v${v.version}.schema.json`, render(v.data, `${type} v${v.version} data`))
  }
  return files
}

// `npm run schemas`: writes schemas/json/ from the Effect Schema definitions.
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import path from "node:path"
import { jsonSchemaFiles } from "../services/events.ts"
import { repoRoot } from "../core/stack-env.ts"

const dir = path.join(repoRoot, "schemas/json")
rmSync(dir, { recursive: true, force: true })
const files = jsonSchemaFiles()
for (const [name, text] of files) {
  mkdirSync(path.dirname(path.join(dir, name)), { recursive: true })
  writeFileSync(path.join(dir, name), text)
}
console.log(`wrote ${files.size} JSON Schema files to schemas/json`)

// `npm run docs:config`: rewrites the README's configuration table from each service's config.ts.
import { readFileSync, writeFileSync } from "node:fs"
import path from "node:path"
import { withClientTable } from "../cli/client-config.ts"
import { withTable } from "../core/config/docs.ts"
import { repoRoot } from "../core/stack-env.ts"
import { serviceSpecs } from "../services/specs.ts"

const file = path.join(repoRoot, "README.md")
writeFileSync(file, withClientTable(withTable(readFileSync(file, "utf8"), serviceSpecs)))
console.log("README.md configuration table updated")

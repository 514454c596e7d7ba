// Builds dist/esm and dist/cjs from src with the repository's tsc: one compile per module
// format, each with its declarations; dist/cjs gets a package.json saying "commonjs" so
// Node reads its .js files as CommonJS inside this "type": "module" package.
import { execFileSync } from "node:child_process"
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import path from "node:path"

const sdk = path.resolve(import.meta.dirname, "..")
// typescript exports no bin path; its package.json is exported and the bin sits beside it
const tsc = path.join(path.dirname(createRequire(import.meta.url).resolve("typescript/package.json")), "bin", "tsc")
const dist = path.join(sdk, "dist")
rmSync(dist, { recursive: true, force: true })

const build = (outDir: string, module: string) =>
  execFileSync(process.execPath, [tsc, "-p", path.join(sdk, "tsconfig.build.json"), "--outDir", outDir, "--module", module, ...(module === "commonjs" ? ["--moduleResolution", "bundler"] : [])], { stdio: "inherit", cwd: sdk })

build(path.join(dist, "esm"), "nodenext")
build(path.join(dist, "cjs"), "commonjs")
mkdirSync(path.join(dist, "cjs"), { recursive: true })
writeFileSync(path.join(dist, "cjs", "package.json"), JSON.stringify({ type: "commonjs" }) + "\n")
writeFileSync(path.join(dist, "esm", "package.json"), JSON.stringify({ type: "module" }) + "\n")

// tsc rewrites relative ".ts" imports in the JavaScript but keeps them in declarations; a
// consumer's compiler without allowImportingTsExtensions wants ".js" there too
for (const dir of ["esm", "cjs"]) {
  for (const f of readdirSync(path.join(dist, dir)).filter((n) => n.endsWith(".d.ts"))) {
    const file = path.join(dist, dir, f)
    writeFileSync(file, readFileSync(file, "utf8").replace(/(from "\.\/[\w-]+)\.ts"/g, '$1.js"'))
  }
}

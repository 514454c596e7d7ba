#!/usr/bin/env bash
# `npm start` and `npm test` on a fresh clone: install the dependencies when they are
# missing or older than package-lock.json (npm records each install in
# node_modules/.package-lock.json), so cloning and running is two commands, not three.
# After `npm ci` (as CI does) this is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=node_modules/.package-lock.json
if [[ ! -f "$marker" || package-lock.json -nt "$marker" || ! -x node_modules/.bin/node ]]; then
  echo "installing dependencies (npm ci)…" >&2
  npm ci --no-audit --no-fund >&2
fi

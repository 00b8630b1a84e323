#!/usr/bin/env bash
# Installs the npm packages pinned by DIR/package-lock.json, for each DIR given, with
# `npm ci`: unless DIR/node_modules already holds exactly that lockfile's packages (a
# stamp of the lockfile's hash), so that repeated runs, and offline runs once installed,
# need no network. npm's own cache is preferred to the registry.
set -euo pipefail
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "gale: the JavaScript tests need Node.js 20 or later (found $(node --version))" >&2
  exit 1
fi
for dir in "$@"; do
  lock="$dir/package-lock.json"
  stamp="$dir/node_modules/.gale-lock.sha256"
  want=$(sha256sum "$lock" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "gale: $dir/node_modules is up to date"
    continue
  fi
  echo "gale: npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
  echo "$want" >"$stamp"
done

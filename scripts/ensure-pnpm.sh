#!/usr/bin/env bash
# Makes the pnpm version named in package.json ("packageManager") available on PATH.
# Installs it from the npm registry when missing: globally when that is allowed, otherwise
# into .tools/ inside the checkout. Source this file; it exports PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want="$(node -p "require('$root/package.json').packageManager.split('@')[1]")"

node_ok="$(node -e 'const [a,b,c]=process.versions.node.split(".").map(Number); process.stdout.write(String(a>20||(a===20&&(b>18||(b===18&&c>=1)))))')"
if [ "$node_ok" != "true" ]; then
  echo "Node.js >= 20.18.1 is required; found $(node --version)." >&2
  exit 1
fi

if [ -x "$root/.tools/bin/pnpm" ]; then
  export PATH="$root/.tools/bin:$PATH"
fi
if command -v pnpm >/dev/null 2>&1 && [ "$(pnpm --version 2>/dev/null)" = "$want" ]; then
  return 0 2>/dev/null || exit 0
fi
echo "Installing pnpm $want from the npm registry..."
if ! npm install --global --silent "pnpm@$want" >/dev/null 2>&1; then
  npm install --silent --prefix "$root/.tools" "pnpm@$want" >/dev/null
  mkdir -p "$root/.tools/bin"
  ln -sf "$root/.tools/node_modules/.bin/pnpm" "$root/.tools/bin/pnpm"
  export PATH="$root/.tools/bin:$PATH"
fi
hash -r
pnpm --version >/dev/null

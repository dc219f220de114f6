#!/usr/bin/env bash
# Builds demo/static/supertokens.js: an IIFE bundle of supertokens-website@4.2.0
# (exposed as window.supertokens) from the npm registry only.
# Usage: bash demo/frontend/build.sh   (from anywhere; needs node >= 18 and npm)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${SUPERTOKENS_BUNDLE_OUT:-$here/../static/supertokens.js}"

cd "$here"
# Install exactly what package-lock.json says. Install scripts are skipped:
# browser-tabs-lock's only prints a banner and esbuild's only swaps its JS
# launcher for the native binary (the launcher finds @esbuild/<platform>).
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

mkdir -p "$(dirname "$out")"
./node_modules/.bin/esbuild entry.js \
  --bundle \
  --format=iife \
  --platform=browser \
  --target=es2017 \
  --inject:./process-shim.js \
  --define:global=globalThis \
  --legal-comments=none \
  --log-level=warning \
  --outfile="$out"

echo "built $out ($(wc -c < "$out") bytes)"

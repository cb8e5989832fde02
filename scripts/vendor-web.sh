#!/usr/bin/env bash
# Fetch the web desktop's browser libraries from the npm registry into web/vendor/.
#
#   scripts/vendor-web.sh          # (re)write web/vendor/ from the pinned versions below
#
# Each package is fetched with `npm pack NAME@VERSION` (no install, no scripts run),
# its tarball checked against the registry's sha512 integrity, and only the files the
# page loads are copied, with the package's LICENSE, into web/vendor/<name>/.
# web/vendor/VERSIONS records what was taken: name, version, tarball integrity, and
# the sha256 of every vendored file. Run it again after changing a version; review
# the diff of web/vendor/ before committing.
#
# Changes to the upstream files (all recorded in VERSIONS):
#   * the ES module builds are renamed to *.js (served as JavaScript by any static server);
#   * the trailing "//# sourceMappingURL=" comment is dropped (the maps are not vendored);
#   * preact/hooks imports "preact" by bare name: it is rewritten to "./preact.module.js",
#     since the page has no import map (the CSP forbids an inline one).
set -euo pipefail

# name@version  (exact pins: change them here, nowhere else)
XTERM=@xterm/xterm@6.0.0
FIT=@xterm/addon-fit@0.11.0
UPLOT=uplot@1.6.32
PREACT=preact@11.2.0
HTM=htm@3.1.1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENDOR="$ROOT/web/vendor"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

command -v npm >/dev/null || { echo "vendor-web: npm is needed" >&2; exit 1; }

VERSIONS_TMP="$TMP/VERSIONS"
{
    echo "# Browser libraries vendored by scripts/vendor-web.sh; do not edit by hand."
    echo "# package <name> <version> <tarball integrity from the npm registry>"
    echo "#   file <path under web/vendor> sha256 <hex> [changed: what]"
} > "$VERSIONS_TMP"

# fetch SPEC: npm pack into $TMP/<n>/, check the integrity, unpack; sets PKG (the unpacked dir) and INTEGRITY
fetch() {
    local spec=$1 dir
    dir="$TMP/$(echo "$spec" | tr '/@' '__')"
    mkdir -p "$dir"
    (cd "$dir" && npm pack "$spec" --json --silent > pack.json)
    local tgz
    tgz=$(node -e 'const p=require(process.argv[1])[0]; console.log(p.filename)' "$dir/pack.json")
    INTEGRITY=$(npm view "$spec" dist.integrity)
    local got
    got="sha512-$(openssl dgst -sha512 -binary "$dir/$tgz" | base64 -w0)"
    if [ "$got" != "$INTEGRITY" ]; then
        echo "vendor-web: $spec: tarball integrity $got does not match the registry's $INTEGRITY" >&2
        exit 1
    fi
    tar xzf "$dir/$tgz" -C "$dir"
    PKG="$dir/package"
    local name=${spec%@*} version=${spec##*@}
    echo "package $name $version $INTEGRITY" >> "$VERSIONS_TMP"
}

# take SRC DEST [CHANGE [FILE]]: copy the package's file SRC (or FILE, a changed copy of it) to DEST,
# strip its source map comment, record it
take() {
    local src=$1 dest=$2 change=${3:-} file=${4:-$PKG/$1}
    mkdir -p "$(dirname "$VENDOR_NEW/$dest")"
    if [[ $src == *.js || $src == *.mjs ]] && grep -q '^//# sourceMappingURL=' "$file"; then
        sed '/^\/\/# sourceMappingURL=/d' "$file" > "$VENDOR_NEW/$dest"
        change="${change:+$change; }source map comment dropped"
    else
        cp "$file" "$VENDOR_NEW/$dest"
    fi
    if [ "$(basename "$src")" != "$(basename "$dest")" ]; then
        change="renamed from $src${change:+; $change}"
    fi
    local sum
    sum=$(sha256sum "$VENDOR_NEW/$dest" | cut -d' ' -f1)
    echo "  file $dest sha256 $sum${change:+ [changed: $change]}" >> "$VERSIONS_TMP"
}

VENDOR_NEW="$TMP/vendor"
mkdir -p "$VENDOR_NEW"

fetch "$XTERM"
take lib/xterm.mjs xterm/xterm.module.js
take css/xterm.css xterm/xterm.css
take LICENSE xterm/LICENSE

fetch "$FIT"
take lib/addon-fit.mjs xterm-addon-fit/addon-fit.module.js
take LICENSE xterm-addon-fit/LICENSE

fetch "$UPLOT"
take dist/uPlot.esm.js uplot/uPlot.esm.js
take dist/uPlot.min.css uplot/uPlot.min.css
take LICENSE uplot/LICENSE

fetch "$PREACT"
take dist/preact.mjs preact/preact.module.js
# hooks imports "preact" by its bare name; the page loads it by a relative URL
sed -e 's/from"preact"/from"\.\/preact.module.js"/g' -e "s/from'preact'/from'.\/preact.module.js'/g" \
    -e 's/from "preact"/from ".\/preact.module.js"/g' "$PKG/hooks/dist/hooks.mjs" > "$TMP/hooks.mjs"
if grep -q "from *[\"']preact[\"']" "$TMP/hooks.mjs" || ! grep -q 'preact.module.js' "$TMP/hooks.mjs"; then
    echo "vendor-web: could not rewrite preact/hooks' import of preact" >&2
    exit 1
fi
take hooks/dist/hooks.mjs preact/hooks.module.js 'import of "preact" rewritten to "./preact.module.js"' "$TMP/hooks.mjs"
take LICENSE preact/LICENSE

fetch "$HTM"
take dist/htm.module.js htm/htm.module.js
take LICENSE htm/LICENSE

# every vendored module must import nothing by a bare name (nothing outside web/vendor)
if grep -lE "(import|from)[[:space:]]*[\"'][^./\"'][^\"']*[\"']" "$VENDOR_NEW"/*/*.js; then
    echo "vendor-web: a vendored module imports a bare name (listed above)" >&2
    exit 1
fi

rm -rf "$VENDOR"
mv "$VENDOR_NEW" "$VENDOR"
cp "$VERSIONS_TMP" "$VENDOR/VERSIONS"
echo "vendor-web: wrote $(find "$VENDOR" -type f | wc -l) files into ${VENDOR#"$ROOT"/}"

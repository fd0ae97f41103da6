#!/usr/bin/env bash
# Builds the dashboard into web/dist (index.html, style.css, pkg/*.js, pkg/*.wasm), from a fresh
# machine: adds the wasm32 target, installs wasm-bindgen-cli (the version in Cargo.lock) and
# wasm-opt (npm binaryen@132) into $HOME/.cache/p2p-tools, then compiles, binds and optimises.
#
# The toolchain, and why:
# - wasm-bindgen-cli must be exactly the wasm-bindgen version in Cargo.lock; it is installed
#   without --locked (its own lock file pins a yanked webpki-roots).
# - wasm-opt comes from npm's binaryen 132, not Debian's binaryen (108), whose wasm-opt mangles the
#   externref table: the page then fails in the browser with "WebAssembly.Table.set(): Argument 1
#   is invalid for table".
# - trunk and cargo-leptos are not used: plain cargo, wasm-bindgen and wasm-opt need no newer
#   rustc and install in minutes.
# - Where rustup cannot add the wasm32-unknown-unknown target (a rustc not managed by rustup),
#   Debian's rustc-web builds the standard library for wasm32 from source instead:
#     apt-get install rustc-web cargo-web rust-web-src lld-22
#     RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build \
#       --profile wasm-release -p p2p-web --target wasm32-unknown-unknown \
#       -Zbuild-std=std,panic_abort --config 'target.wasm32-unknown-unknown.linker="wasm-ld-22"' \
#       --target-dir target/wasm
#   then bind and optimise target/wasm/wasm32-unknown-unknown/wasm-release/p2p_web.wasm as below.
#   Name /usr/bin/cargo (rustup's comes first in PATH) and keep a separate target dir: rustup's
#   rustc with Debian's standard library source does not build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
TOOLS="${P2P_TOOLS_DIR:-$HOME/.cache/p2p-tools}"
OUT=web/dist

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || {
  rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown ||
    { echo "build-web: cannot add the wasm32-unknown-unknown target (see the fallback at the top of scripts/build-web.sh)"; exit 1; }
}

WBV=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! "$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | grep -q " $WBV\$"; then
  echo "build-web: installing wasm-bindgen-cli $WBV (a few minutes, once)"
  cargo install -q wasm-bindgen-cli --version "$WBV" --root "$TOOLS"
fi
WASM_OPT="$TOOLS/npm/node_modules/binaryen/bin/wasm-opt"
if [ ! -x "$WASM_OPT" ]; then
  echo "build-web: installing wasm-opt (npm binaryen@132)"
  mkdir -p "$TOOLS/npm"
  npm install --prefix "$TOOLS/npm" --silent --no-audit --no-fund binaryen@132.0.0
fi

cargo build --locked --profile wasm-release -p p2p-web --target wasm32-unknown-unknown
# Build into a staging folder, then copy into web/dist only the files whose bytes changed: the
# tracker embeds web/dist, so rewriting identical files would re-link it on every run.
STAGE="$CARGO_TARGET_DIR/p2p-web-dist"
rm -rf "$STAGE" && mkdir -p "$STAGE/pkg"
"$TOOLS/bin/wasm-bindgen" --target web --no-typescript --out-dir "$STAGE/pkg" --out-name p2p_web \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/p2p_web.wasm"
"$WASM_OPT" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
  -o "$STAGE/pkg/p2p_web_bg.wasm" "$STAGE/pkg/p2p_web_bg.wasm"
cp web/index.html web/style.css "$STAGE/"
changed=0
while IFS= read -r -d '' file; do
  rel="${file#"$STAGE"/}"
  if ! cmp -s "$file" "$OUT/$rel"; then
    mkdir -p "$(dirname "$OUT/$rel")"
    cp "$file" "$OUT/$rel"
    changed=$((changed + 1))
  fi
done < <(find "$STAGE" -type f -print0)
# Files the new build no longer has.
if [ -d "$OUT" ]; then
  while IFS= read -r -d '' file; do
    rel="${file#"$OUT"/}"
    if [ ! -e "$STAGE/$rel" ]; then
      rm -f "$file"
      changed=$((changed + 1))
    fi
  done < <(find "$OUT" -type f -print0)
fi
echo "build-web: $(du -sh "$OUT" | cut -f1) in $OUT ($(stat -c %s "$OUT/pkg/p2p_web_bg.wasm") bytes of wasm, $changed files changed)"

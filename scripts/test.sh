#!/usr/bin/env bash
# Loa — the test command: installs what is missing (scripts/setup.sh), builds
# every binary, checks formatting and lints, runs every crate's tests, then
# the end-to-end tests that start the real binaries and record what the
# receivers play (one at a time: they measure real-time playout), the
# console's browser tests, and a bounded run of every fuzz target.
# Exits non-zero if anything fails. Works without a terminal (CI=true).

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/setup.sh || exit 1

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([ -t 1 ] && echo always || echo never)}"
export RUST_BACKTRACE=1
export RUST_LIB_BACKTRACE=0  # panics get backtraces; anyhow errors (already explained) do not
# A clean checkout builds once: incremental caches would only take disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
echo "disk before the build: $(df -h --output=avail . | tail -1 | tr -d ' ') free"

names=()
results=()
times=()
failed=0

# step NAME COMMAND...: runs a step, records PASS/FAIL and its duration.
step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        results+=(PASS)
    else
        results+=(FAIL)
        failed=1
    fi
    names+=("$name")
    times+=($((SECONDS - start)))
}

# skip NAME REASON: records a step that could not run.
skip() {
    names+=("$1")
    results+=("SKIP ($2)")
    times+=(0)
    failed=1
}

rm -rf tests/artifacts  # figures printed below are from this run only

step "format" cargo fmt --all --check
step "build" cargo build --workspace --bins
built=${results[-1]}
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
step "unit and integration tests" cargo test --workspace --exclude loa-e2e
if [ "$built" = PASS ]; then
    step "end-to-end tests" cargo test -p loa-e2e --no-fail-fast -- --test-threads=1 --nocapture
    step "browser tests (console)" bash scripts/browser-test.sh
else
    skip "end-to-end tests" "build failed"
    skip "browser tests (console)" "build failed"
fi
# Bounded fuzzing of the bad-input surface (cargo fuzz on stable; its own
# build of the targets with AddressSanitizer): LOA_FUZZ_SECONDS per target.
# A fixed seed: every run explores the same inputs, so a finding reproduces.
export LOA_FUZZ_SEED=${LOA_FUZZ_SEED:-1}
step "fuzzing (${LOA_FUZZ_SECONDS:-30} s per target)" bash scripts/fuzz.sh "${LOA_FUZZ_SECONDS:-30}"

echo
echo "==> measured figures (tests/artifacts/*/figures.txt)"
for f in tests/artifacts/*/figures.txt; do
    [ -f "$f" ] || continue
    echo "--- $f"
    cat "$f"
done

echo
echo "==> summary"
for i in "${!names[@]}"; do
    printf '  %-28s %-22s %5ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done
if ((failed)); then
    echo "FAILED (logs of the end-to-end tests: tests/artifacts/)"
    exit 1
fi
echo "ALL PASSED"

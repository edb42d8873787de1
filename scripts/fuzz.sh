#!/usr/bin/env bash
# Loa — bounded fuzzing of the bad-input surface (issue 5, fuzz/):
#   live_frame     binary live frames (loa_protocol::live::LiveFrame)
#   messages       JSON controller<->receiver messages, signed envelopes, topics
#   schedule       schedule / RRULE parsing and expansion (loa_schedules)
#   upload_decode  the upload transcoder (loa_controller::transcode)
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, all targets)
#
# Installs cargo-fuzz if missing, builds every target once (AddressSanitizer;
# set LOA_FUZZ_SANITIZER=none to build without), then runs each for the given
# time with libFuzzer's -rss_limit_mb=2048 -timeout=10. New inputs go to
# fuzz/work/corpus/TARGET (not committed); the committed seeds in
# fuzz/corpus/TARGET are only read. A crash, hang, leak or out-of-memory
# leaves its input in fuzz/artifacts/TARGET/ (not committed) and makes the
# script exit 1 after the remaining targets ran; reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/FILE
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the
# -Z sanitizer flags cargo-fuzz passes.

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=${1:-60}
shift || true
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
all_targets=(live_frame messages schedule upload_decode)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

export RUSTC_BOOTSTRAP=1
# libFuzzer's seed: 0 draws a new one each run; the test command fixes it so
# that CI explores the same inputs on every run (a finding reproduces).
seed=${LOA_FUZZ_SEED:-0}
sanitizer=${LOA_FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13' || exit 1
fi

start=$SECONDS
echo "==> building fuzz targets (sanitizer: $sanitizer)"
if ! cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer"; then
    echo "fuzz: build failed" >&2
    exit 1
fi
build_secs=$((SECONDS - start))

mkdir -p fuzz/work/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/corpus/$t" "fuzz/artifacts/$t"
    before=$(ls "fuzz/artifacts/$t" | wc -l)
    dict=()
    [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=fuzz/dicts/$t.dict")
    log="fuzz/work/logs/$t.log"
    echo
    echo "==> fuzzing $t for ${secs}s (log: $log)"
    t0=$SECONDS
    cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$t" \
        "fuzz/work/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -seed="$seed" \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    after=$(ls "fuzz/artifacts/$t" | wc -l)
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: FAIL (exit $rc, ${runs:-?} runs, $((SECONDS - t0)) s)")
        echo "---- $t failed; end of its log:"
        tail -n 40 "$log"
        if [ "$after" -gt "$before" ]; then
            echo "---- inputs that failed:"
            ls -t "fuzz/artifacts/$t" | head -n $((after - before)) | sed "s|^|fuzz/artifacts/$t/|"
        fi
    else
        summary+=("$t: ok (${runs:-?} runs, $((SECONDS - t0)) s)")
    fi
done

echo
echo "==> fuzz summary (build ${build_secs} s, total $((SECONDS - start)) s)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}" >&2
    exit 1
fi

#!/bin/sh
# Live-broadcast benchmark: for 1, 10, 100 and 1,000 receivers on this
# machine (the real controller and its embedded broker; lightweight
# in-process receivers), frames lost, capture→playout latency p50/p99 and the
# sync spread between receivers; then Loa and Snapcast on the same JACK rig
# (source click → loudspeaker click, one sample clock). Bounded: about four
# minutes. Options go to the benchmark, e.g.
#   bench/live.sh --counts 1,10,100 --no-snapcast --snapcast-buffers 1000,400
# Needs what scripts/setup.sh installs (jackd2, espeak-ng, sox, lame, ffmpeg;
# snapserver and snapclient for the Snapcast comparison).
set -eu
cd "$(dirname "$0")/.."
# The benchmark starts the real binaries; it runs in the dev profile (whose
# dependencies are optimised) so that it finds them next to itself.
cargo build -p loa-controller -p loa-receiver --bins
exec cargo bench -p loa-e2e --bench live --profile dev -- "$@"

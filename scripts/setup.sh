#!/usr/bin/env bash
# Loa — installs what building, testing and running the demo need on Debian 12,
# and nothing that is already there. Run it, or source it (then PATH keeps
# ~/.cargo/bin). Needs root, or sudo; quiet unless something is missing.
#
#   build:   cmake pkg-config libasound2-dev libjack-jackd2-dev gcc
#   tests:   jackd2 libasound2-plugins alsa-utils espeak-ng sox lame ffmpeg opus-tools mosquitto
#            icecast2 (the relay test's radio station), mosquitto-clients (scripts/bad-input.sh),
#            faketime (the fault suite moves a receiver's wall clock),
#            openssl (test certificates for MQTT over TLS)
#   bench:   snapserver snapclient (Snapcast, printed beside Loa by bench/live.sh)
#   console: chromium fonts-dejavu-core (browser tests), and nodejs npm when
#            there is no `node` yet (one from elsewhere, e.g. NodeSource, is kept)
#   demo:    curl jq
#
# The Rust toolchain (cargo ≥ 1.90) is not installed here: get it from
# https://rustup.rs if `cargo` is missing.

loa_setup() {
    local build=(cmake pkg-config libasound2-dev libjack-jackd2-dev gcc)
    local runtime=(jackd2 libasound2-plugins alsa-utils espeak-ng sox lame ffmpeg opus-tools mosquitto
        icecast2 mosquitto-clients faketime openssl snapserver snapclient curl jq chromium fonts-dejavu-core)
    local missing=() pkg
    for pkg in "${build[@]}" "${runtime[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)

    if ((${#missing[@]})); then
        local sudo=()
        if [ "$(id -u)" != 0 ]; then
            if ! command -v sudo >/dev/null 2>&1; then
                echo "setup: missing Debian packages: ${missing[*]}" >&2
                echo "setup: not root and no sudo; install them as root: apt-get install ${missing[*]}" >&2
                return 1
            fi
            # Without a terminal (CI) sudo must not wait for a password.
            if [ -t 0 ]; then sudo=(sudo); else sudo=(sudo -n); fi
        fi
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq >/dev/null || { echo "setup: apt-get update failed" >&2; return 1; }
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
            { echo "setup: apt-get install ${missing[*]} failed" >&2; return 1; }
        # Debian starts the Mosquitto service on install; it would hold port
        # 1883, which the demo's embedded broker uses (the tests start their
        # own Mosquitto on ports of their own). Snapcast's and Icecast's
        # services are not needed either: the tests and the benchmark start
        # private instances on free ports. Stop and disable only the services
        # we have just installed.
        local service
        for service in mosquitto snapserver snapclient icecast2; do
            [[ " ${missing[*]} " == *" $service "* ]] || continue
            if [ -d /run/systemd/system ]; then
                "${sudo[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
            else
                "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true
                "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
            fi
        done
    fi

    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found. Loa needs the Rust toolchain (1.90 or newer):" >&2
        echo "setup:   curl --proto '=https' -sSf https://sh.rustup.rs | sh   (then open a new shell)" >&2
        return 1
    fi
    local have
    have=$(cargo --version 2>/dev/null | awk '{print $2}')
    if [ "$(printf '%s\n1.90.0\n' "$have" | sort -V | head -n1)" != "1.90.0" ]; then
        echo "setup: cargo $have is older than 1.90; run: rustup update" >&2
        return 1
    fi
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    loa_setup
else
    set -euo pipefail
    loa_setup
fi

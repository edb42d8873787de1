#!/usr/bin/env bash
# Loa — installs what building, testing and running the demo need on Debian 12,
# and nothing that is already there. Run it, or source it (then PATH keeps
# ~/.cargo/bin). Needs root, or sudo; quiet unless something is missing.
#
#   build:   cmake pkg-config libasound2-dev libjack-jackd2-dev gcc
#   tests:   jackd2 libasound2-plugins alsa-utils espeak-ng sox lame ffmpeg opus-tools mosquitto
#   demo:    curl jq
#
# The Rust toolchain (cargo ≥ 1.90) is not installed here: get it from
# https://rustup.rs if `cargo` is missing.

loa_setup() {
    local build=(cmake pkg-config libasound2-dev libjack-jackd2-dev gcc)
    local runtime=(jackd2 libasound2-plugins alsa-utils espeak-ng sox lame ffmpeg opus-tools mosquitto curl jq)
    local missing=() pkg
    for pkg in "${build[@]}" "${runtime[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done

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
        # own Mosquitto on ports of their own). Stop and disable only the
        # service we have just installed.
        if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
            if [ -d /run/systemd/system ]; then
                "${sudo[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
            else
                "${sudo[@]}" service mosquitto stop >/dev/null 2>&1 || true
                "${sudo[@]}" update-rc.d mosquitto disable >/dev/null 2>&1 || true
            fi
        fi
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

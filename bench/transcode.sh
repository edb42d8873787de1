#!/bin/sh
# Transcoding benchmark: Loa's transcoder vs `ffmpeg -c:a libopus` on the same
# generated 60 s Vietnamese speech MP3, same bitrate (32 kb/s) and complexity
# (10). Prints both median times and the ratio (target: Loa no slower).
# Needs espeak-ng, sox, lame and ffmpeg (Debian packages of the same names).
set -eu
cd "$(dirname "$0")/.."
exec cargo bench -p loa-controller --bench transcode "$@"

#!/usr/bin/env bash
# Loa — the demo: a controller with its embedded MQTT broker, two villages
# (zones), three receivers, a Vietnamese bulletin scheduled twice a week and
# once ~20 s from now, so something plays at once. Stays in the foreground;
# Ctrl-C stops everything. Re-running reuses ./demo-data.
#
#   LOA_ADMIN_PASSWORD   admin password (default: generated once, kept in demo-data/admin-password)
#   LOA_DEMO_HTTP        API address (default 127.0.0.1:8080)
#   LOA_DEMO_MQTT        embedded broker address (default 127.0.0.1:1883)
#   LOA_DEMO_PROFILE     cargo profile: debug (default; shares the build with
#                        scripts/test.sh, dependencies are optimised anyway)
#                        or release (faster binaries, a long extra build)
#   LOA_DEMO_OUTPUT      receivers' --output (default: cpal if `aplay -l`
#                        lists a sound card, else wav:demo-data/loa-N.wav)

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

source scripts/setup.sh

HTTP=${LOA_DEMO_HTTP:-127.0.0.1:8080}
MQTT=${LOA_DEMO_MQTT:-127.0.0.1:1883}
PROFILE=${LOA_DEMO_PROFILE:-debug}
DATA=$ROOT/demo-data
API=http://$HTTP/api/v1
mkdir -p "$DATA/receivers"

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
die() { printf '\nLỗi / error: %s\n' "$*" >&2; exit 1; }

# --- build -------------------------------------------------------------------
say "Đang biên dịch / building ($PROFILE)…"
if [ "$PROFILE" = release ]; then
    cargo build --release -p loa-controller -p loa-receiver --bins
    BIN=$ROOT/target/release
else
    cargo build -p loa-controller -p loa-receiver --bins
    BIN=$ROOT/target/debug
fi

# --- ports must be free ------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
port_busy "$HTTP" && die "$HTTP đang bị chiếm / is in use (set LOA_DEMO_HTTP)"
port_busy "$MQTT" && die "$MQTT đang bị chiếm / is in use — a system Mosquitto? (service mosquitto stop, or set LOA_DEMO_MQTT)"

# --- admin password ----------------------------------------------------------
if [ -z "${LOA_ADMIN_PASSWORD:-}" ]; then
    if [ -s "$DATA/admin-password" ]; then
        LOA_ADMIN_PASSWORD=$(cat "$DATA/admin-password")
    else
        LOA_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=' | head -c 20)
        (umask 077 && printf '%s\n' "$LOA_ADMIN_PASSWORD" >"$DATA/admin-password")
    fi
fi
export LOA_ADMIN_PASSWORD

# --- children are stopped on exit --------------------------------------------
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        say "Đang dừng / stopping…"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "${PIDS[@]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- controller --------------------------------------------------------------
say "Khởi động bộ điều khiển / starting the controller on http://$HTTP (MQTT $MQTT)"
"$BIN/loa-controller" serve --data "$DATA/controller" --http "$HTTP" --mqtt "$MQTT" \
    >>"$DATA/controller.log" 2>&1 &
PIDS+=($!)
for i in $(seq 120); do
    curl -fsS "$API/health" >/dev/null 2>&1 && break
    kill -0 "${PIDS[0]}" 2>/dev/null || die "controller exited; see $DATA/controller.log:
$(tail -n 20 "$DATA/controller.log")"
    [ "$i" = 120 ] && die "controller not healthy after 60 s; see $DATA/controller.log"
    sleep 0.5
done

# call METHOD PATH [JSON]: sets BODY and STATUS.
call() {
    local out
    out=$(curl -sS -w '\n%{http_code}' -X "$1" "$API$2" -H "Authorization: Bearer ${TOKEN:-}" \
        -H 'Content-Type: application/json' ${3:+--data "$3"}) || die "$1 $2: curl failed"
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
}
# ok [EXTRA_STATUS...]: dies unless STATUS is 2xx or one of the extra statuses.
ok() {
    case " 200 201 204 $* " in *" $STATUS "*) return 0 ;; esac
    die "API $STATUS: $BODY"
}

TOKEN=
call POST /login "$(jq -n --arg p "$LOA_ADMIN_PASSWORD" '{username: "admin", password: $p}')"
[ "$STATUS" = 200 ] || die "đăng nhập thất bại / login failed ($STATUS): $BODY
demo-data was created with another admin password: use it (LOA_ADMIN_PASSWORD=…) or delete demo-data/."
TOKEN=$(jq -r .token <<<"$BODY")

# --- zones and receivers (409 = exists from an earlier run) ------------------
say "Tạo thôn và loa / creating zones and receivers"
call POST /zones '{"id":"thon-1","name":"Thôn 1"}' && ok 409
call POST /zones '{"id":"thon-2","name":"Thôn 2"}' && ok 409

if [ -n "${LOA_DEMO_OUTPUT:-}" ]; then
    OUTPUT_MODE=$LOA_DEMO_OUTPUT
elif aplay -l 2>/dev/null | grep -q '^card '; then
    OUTPUT_MODE=cpal
else
    OUTPUT_MODE=wav
fi

declare -A ZONE=([loa-1]=thon-1 [loa-2]=thon-1 [loa-3]=thon-2)
declare -A NAME=([loa-1]="Loa 1 – Thôn 1" [loa-2]="Loa 2 – Thôn 1" [loa-3]="Loa 3 – Thôn 2")
for id in loa-1 loa-2 loa-3; do
    dir=$DATA/receivers/$id
    mkdir -p "$dir"
    call POST /receivers "$(jq -n --arg id "$id" --arg n "${NAME[$id]}" --arg z "${ZONE[$id]}" \
        '{id: $id, name: $n, zone: $z}')"
    if [ "$STATUS" = 409 ] && [ ! -s "$dir/token" ]; then
        # Registered earlier but its token (shown once) is lost: issue a new one.
        call POST "/receivers/$id/token"
    fi
    if [ "$STATUS" != 409 ]; then
        ok
        (umask 077 && jq -r .token <<<"$BODY" >"$dir/token")
    fi
done

# --- receivers ----------------------------------------------------------------
say "Khởi động 3 loa / starting 3 receivers (output: $OUTPUT_MODE)"
for id in loa-1 loa-2 loa-3; do
    dir=$DATA/receivers/$id
    case $OUTPUT_MODE in
        wav) output=wav:$DATA/$id.wav ;;
        *) output=$OUTPUT_MODE ;;
    esac
    # The token goes in the environment (LOA_RECEIVER_TOKEN = --token), not in `ps`.
    LOA_RECEIVER_TOKEN=$(cat "$dir/token") "$BIN/loa-receiver" run --id "$id" \
        --controller "http://$HTTP" --broker "mqtt://$MQTT" \
        --cache "$dir/cache" --output "$output" >>"$DATA/$id.log" 2>&1 &
    PIDS+=($!)
done

# --- the bulletin ---------------------------------------------------------------
TITLE="Bản tin chuyển đổi số"
MP3=$DATA/ban-tin-chuyen-doi-so.mp3
if [ ! -s "$MP3" ]; then
    say "Tạo bản tin bằng espeak-ng / generating the bulletin with espeak-ng"
    espeak-ng -v vi -s 140 -w "$DATA/ban-tin.wav" \
        "Kính thưa bà con. Đây là bản tin chuyển đổi số của Ủy ban nhân dân xã. \
Từ tuần này, bà con có thể nộp hồ sơ hành chính trên Cổng dịch vụ công quốc gia, \
không cần đến trụ sở xã. Mọi thắc mắc xin liên hệ tổ công nghệ số cộng đồng của thôn."
    lame --quiet -b 64 "$DATA/ban-tin.wav" "$MP3"
fi
call GET /programmes && ok
PROGRAMME=$(jq -r --arg t "$TITLE" '[.[] | select(.title == $t)][0].id // empty' <<<"$BODY")
if [ -z "$PROGRAMME" ]; then
    say "Tải lên / uploading \"$TITLE\""
    out=$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" \
        -F "file=@$MP3;type=audio/mpeg" -F "title=$TITLE" -F "category=chuyen-doi-so" "$API/programmes")
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
    ok
    PROGRAMME=$(jq -r .id <<<"$BODY")
fi

# --- schedules ------------------------------------------------------------------
EXAMPLE=$ROOT/schedules/examples/chuyen-doi-so-2-lan-tuan.json
if [ -s "$EXAMPLE" ]; then
    weekly=$(jq --arg p "$PROGRAMME" '.programme_id = $p' "$EXAMPLE")
else
    days=$(((2 - $(TZ=Asia/Ho_Chi_Minh date +%u) + 7) % 7))
    [ "$days" = 0 ] && days=7
    weekly=$(jq -n --arg p "$PROGRAMME" --arg s "$(TZ=Asia/Ho_Chi_Minh date -d "+$days days" +%Y-%m-%dT06:30:00)" \
        '{programme_id: $p, targets: {zones: ["thon-1", "thon-2"], receivers: []}, start: $s,
          timezone: "Asia/Ho_Chi_Minh", rrule: "FREQ=WEEKLY;BYDAY=TU,FR", priority: "normal"}')
fi
call GET /schedules && ok
if jq -e --arg p "$PROGRAMME" 'any(.[]; .programme_id == $p and .rrule != null)' <<<"$BODY" >/dev/null; then
    say "Lịch hai lần một tuần đã có / the twice-weekly schedule exists"
else
    call POST /schedules "$weekly" && ok
    say "Lịch hai lần một tuần (thứ Ba, thứ Sáu 06:30) / twice weekly — next: $(jq -r '.next_occurrences[:2] | join(", ")' <<<"$BODY")"
fi
# Wait until the receivers are online, then play once ~20 s from now.
for _ in $(seq 60); do
    call GET /receivers
    [ "$(jq '[.[] | select(.online)] | length' <<<"$BODY" 2>/dev/null)" = 3 ] && break
    sleep 0.5
done
AT=$(($(date +%s) + 20))
START=$(TZ=Asia/Ho_Chi_Minh date -d "@$AT" +%Y-%m-%dT%H:%M:%S)
call POST /schedules "$(jq -n --arg p "$PROGRAMME" --arg s "$START" \
    '{programme_id: $p, targets: {zones: ["thon-1", "thon-2"], receivers: []}, start: $s,
      timezone: "Asia/Ho_Chi_Minh", priority: "normal"}')" && ok

# --- where to look ---------------------------------------------------------------
WAVS="(loa phát qua card âm thanh / playing through the sound card)"
[ "$OUTPUT_MODE" = wav ] && WAVS="$DATA/loa-1.wav  $DATA/loa-2.wav  $DATA/loa-3.wav"
cat <<EOF

════════════════════════════════════════════════════════════════════════════
 Loa đang chạy / Loa is running
════════════════════════════════════════════════════════════════════════════
 Bảng điều khiển / web console: http://$HTTP/
 API:                 $API
 Tài khoản / account: admin   Mật khẩu / password: $LOA_ADMIN_PASSWORD
 Bản tin / programme: $TITLE ($PROGRAMME)
 Phát thử lúc / test play at: $START (giờ Việt Nam / Vietnam time), ~20 s
 Âm thanh / audio:    $WAVS
 Nhật ký / logs:      $DATA/*.log

 Thử / try:
   TOKEN=\$(curl -s $API/login -H 'Content-Type: application/json' \\
       -d '{"username":"admin","password":"$LOA_ADMIN_PASSWORD"}' | jq -r .token)
   curl -s -H "Authorization: Bearer \$TOKEN" $API/receivers | jq
   curl -s -H "Authorization: Bearer \$TOKEN" $API/schedules | jq
   curl -s -H "Authorization: Bearer \$TOKEN" $API/plays | jq
   curl -s -H "Authorization: Bearer \$TOKEN" "$API/plays?format=csv"

 Nhấn Ctrl-C để dừng / press Ctrl-C to stop.
════════════════════════════════════════════════════════════════════════════
EOF

# Open the console in the desktop's browser when there is one.
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null 2>&1; then
    xdg-open "http://$HTTP/" >/dev/null 2>&1 &
fi

# Stay in the foreground until Ctrl-C or until a child dies.
set +e
wait -n "${PIDS[@]}"
say "Một tiến trình đã dừng / a process exited — see $DATA/*.log"
exit 1

#!/usr/bin/env bash
# Loa — replays every bad input of docs/bad-input.md against a real
# controller (HTTP API and its embedded MQTT broker, on 127.0.0.1 only) and
# prints what the system answered, as the Markdown table of that page.
#
# Usage: scripts/bad-input.sh [--write] [--bin PATH]
#   --write     replace the table between the markers in docs/bad-input.md
#   --bin PATH  controller binary (default: target/debug/loa-controller,
#               built with `cargo build -p loa-controller --bin loa-controller`)
#
# Needs curl, jq, python3, sqlite3, ffmpeg, mosquitto_pub (mosquitto-clients).
# Every row whose answer is a 5xx, no answer, or an acceptance of something
# that must be refused is marked **BUG**; the script exits 1 if there is one.

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

write=0
bin=target/debug/loa-controller
while [ $# -gt 0 ]; do
    case $1 in
        --write) write=1 ;;
        --bin) bin=$2; shift ;;
        *) echo "usage: scripts/bad-input.sh [--write] [--bin PATH]" >&2; exit 2 ;;
    esac
    shift
done
if [ ! -x "$bin" ]; then
    echo "==> building the controller"
    cargo build -p loa-controller --bin loa-controller || exit 1
fi
for tool in curl jq python3 sqlite3 ffmpeg mosquitto_pub; do
    command -v "$tool" >/dev/null || { echo "bad-input: $tool is missing (scripts/setup.sh)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/loa-bad-input.XXXXXX)
data=$work/data
log=$work/controller.log
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
mqtt_port=$(free_port)
api=http://127.0.0.1:$http_port/api/v1
max_upload=1048576
password=bad-input-$RANDOM$RANDOM

LOA_ADMIN_PASSWORD=$password RUST_LOG=info "$bin" serve --data "$data" \
    --http "127.0.0.1:$http_port" --mqtt "127.0.0.1:$mqtt_port" \
    --max-upload-bytes $max_upload >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    curl -sf "$api/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "controller died:"; cat "$log"; exit 1; }
    sleep 0.2
done

json=(-H 'Content-Type: application/json')
token=$(curl -s "$api/login" "${json[@]}" -d "{\"username\":\"admin\",\"password\":\"$password\"}" | jq -r .token)
[ -n "$token" ] && [ "$token" != null ] || { echo "login failed"; cat "$log"; exit 1; }
auth=(-H "Authorization: Bearer $token")

# Fixtures: a zone, a receiver, an approved programme.
curl -s "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id":"thon-1","name":"Thôn 1"}' >/dev/null
receiver_token=$(curl -s "${auth[@]}" "${json[@]}" "$api/receivers" \
    -d '{"id":"loa-1","name":"Loa 1","zone":"thon-1"}' | jq -r .token)
q=(-hide_banner -loglevel error -y)
ffmpeg "${q[@]}" -f lavfi -i "sine=frequency=440:duration=12" -ac 1 -c:a libmp3lame -b:a 64k "$work/tone.mp3"
ffmpeg "${q[@]}" -f lavfi -i "color=c=red:s=64x64:d=1" -frames:v 1 "$work/image.png"
head -c $((max_upload * 2)) /dev/urandom >"$work/big.bin"
head -c 65536 /dev/urandom >"$work/noise.wav"
head -c $(($(stat -c %s "$work/tone.mp3") / 3)) "$work/tone.mp3" >"$work/truncated.mp3"
printf 'Xin chào, đây không phải âm thanh.\n' >"$work/text.mp3"
programme=$(curl -s "${auth[@]}" "$api/programmes" -F "file=@$work/tone.mp3" -F title=Tone -F category=test | jq -r .id)
curl -s "${auth[@]}" -X POST "$api/programmes/$programme/approve" >/dev/null

rows=()
bugs=0
# clip N: the first N bytes of stdin, without a character cut in half.
clip() { head -c "$1" | iconv -c -f UTF-8 -t UTF-8; }
# row SURFACE INPUT EXPECT STATUS BODY: EXPECT is `reject` (must be 4xx),
# `any` (an acceptance is a fine answer, e.g. a name that is never a path)
# or `hang` (no answer is a known finding, reported but not counted as a bug).
row() {
    local surface=$1 input=$2 expect=$3 status=$4 body=$5 code msg verdict
    code=$(jq -r '.code // empty' <<<"$body" 2>/dev/null)
    msg=$(jq -r '.message_vi // empty' <<<"$body" 2>/dev/null)
    [ -z "$code$msg" ] && msg=$(printf '%s' "$body" | tr '\n' ' ' | clip 120)
    if [ "$status" = 000 ] && [ "$expect" = hang ]; then
        verdict="**finding**: no answer, the connection stays open"
    elif [ "$status" = 000 ] || [ "${status:0:1}" = 5 ]; then
        verdict="**BUG**"
    elif [ "$expect" = reject ] && [ "${status:0:1}" = 2 ]; then
        verdict="**BUG** (accepted)"
    else
        verdict=ok
    fi
    [ "${verdict:0:7}" = "**BUG**" ] && bugs=$((bugs + 1))
    msg=${msg//|/\\|}
    rows+=("| $surface | $input | $status | ${code:-–} | ${msg:-–} | $verdict |")
}

# http SURFACE INPUT EXPECT CURL-ARGS...: one request, one row.
http() {
    local surface=$1 input=$2 expect=$3 out status
    shift 3
    out=$(curl -s --max-time 20 -w '\n%{http_code}' "$@")
    status=${out##*$'\n'}
    row "$surface" "$input" "$expect" "$status" "${out%$'\n'*}"
}

# raw SURFACE INPUT EXPECT REQUEST-PYTHON-EXPR [WAIT]: a hand-made HTTP
# request (headers curl would not send), answer awaited WAIT s (default 5).
raw() {
    local surface=$1 input=$2 expect=$3 request=$4 wait=${5:-5} out
    out=$(PORT=$http_port TOKEN=$token WAIT=$wait python3 - "$request" <<'EOF'
import os, socket, sys
port, token = int(os.environ["PORT"]), os.environ["TOKEN"]
request = eval(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=float(os.environ["WAIT"]))
try:
    s.sendall(request)
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
        if b"\r\n\r\n" in answer:
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
except socket.timeout:
    pass
head, _, body = answer.partition(b"\r\n\r\n")
status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "000"
print(body.decode(errors="replace"))
print(status)
EOF
)
    row "$surface" "$input" "$expect" "${out##*$'\n'}" "${out%$'\n'*}"
}

up="POST /programmes"
http "$up" "upload of 2 MiB, above \`--max-upload-bytes 1048576\`" reject "${auth[@]}" "$api/programmes" -F "file=@$work/big.bin" -F title=x -F category=x
http "$up" "PNG image as \`file\`" reject "${auth[@]}" "$api/programmes" -F "file=@$work/image.png" -F title=x -F category=x
http "$up" "text file named \`.mp3\`, part Content-Type \`audio/mpeg\`" reject "${auth[@]}" "$api/programmes" -F "file=@$work/text.mp3;type=audio/mpeg" -F title=x -F category=x
http "$up" "64 KiB of random bytes named \`noise.wav\`" reject "${auth[@]}" "$api/programmes" -F "file=@$work/noise.wav" -F title=x -F category=x
printf 'APETAGEX\xd0\x07\x00\x00\x9b\x3a\x9b\xc6\xd6\xd9\x4a\xd9\xeb\xeb\x4a\x00\xa6\xc6\xd6\xd9\x4a\xd9\xeb\x4a' >"$work/ape.mp3"
http "$up" "32-byte APE tag whose size points before the file (found by fuzzing)" reject "${auth[@]}" "$api/programmes" -F "file=@$work/ape.mp3" -F title=x -F category=x
http "$up" "MP3 cut to its first third (12 s → 4 s, no length header)" any "${auth[@]}" "$api/programmes" -F "file=@$work/truncated.mp3" -F title=Truncated -F category=x
http "$up" "body sent as JSON (\`Content-Type: application/json\`)" reject "${auth[@]}" "${json[@]}" "$api/programmes" -d '{"file":"x"}'
http "$up" "no \`file\` field" reject "${auth[@]}" "$api/programmes" -F title=x -F category=x
http "$up" "two \`file\` fields" reject "${auth[@]}" "$api/programmes" -F "file=@$work/tone.mp3" -F "file=@$work/tone.mp3" -F title=x -F category=x
http "$up" "upload filename \`../../etc/passwd\`" any "${auth[@]}" "$api/programmes" -F "file=@$work/tone.mp3;filename=../../etc/passwd" -F title=Traversal -F category=x
outside=$(find "$work" -name passwd | wc -l)
[ /etc/passwd -nt "$work/tone.mp3" ] && outside=$((outside + 1))
rows+=("| $up | → files named \`passwd\` under the data dir, or \`/etc/passwd\` modified, afterwards | – | – | $outside | $([ "$outside" = 0 ] && echo ok || echo '**BUG**') |")
http "$up" "programme id \`../../etc/passwd\`" reject "${auth[@]}" "$api/programmes" -F "file=@$work/tone.mp3" -F id=../../etc/passwd -F title=x -F category=x
http "$up" "title of 10 000 characters" reject "${auth[@]}" "$api/programmes" -F "file=@$work/tone.mp3" -F "title=$(head -c 10000 /dev/zero | tr '\0' a)" -F category=x
boundary=loa-bad-input
part="--$boundary\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nx\r\n--$boundary\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nx\r\n--$boundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
raw "$up" "\`Content-Length: 1073741824\` (above the limit), 200 bytes sent" reject \
    "b'POST /api/v1/programmes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '+token.encode()+b'\r\nContent-Type: multipart/form-data; boundary=$boundary\r\nContent-Length: 1073741824\r\n\r\n'+b'$part'+b'x'*100"
raw "$up" "\`Content-Length: 60\`, a 400-byte multipart body sent" reject \
    "b'POST /api/v1/programmes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '+token.encode()+b'\r\nContent-Type: multipart/form-data; boundary=$boundary\r\nContent-Length: 60\r\nConnection: close\r\n\r\n'+b'$part'+b'x'*100+b'\r\n--$boundary--\r\n'"
raw "$up" "\`Content-Length: 5000\`, 300 bytes sent, then silence (answer awaited 40 s)" hang \
    "b'POST /api/v1/programmes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '+token.encode()+b'\r\nContent-Type: multipart/form-data; boundary=$boundary\r\nContent-Length: 5000\r\n\r\n'+b'$part'+b'x'*50" 40

paths="ids in paths"
http "$paths" "GET /programmes/..%2F..%2Fetc%2Fpasswd" reject "${auth[@]}" "$api/programmes/..%2F..%2Fetc%2Fpasswd"
http "$paths" "GET /programmes/..%2F..%2Fetc%2Fpasswd/audio" reject "${auth[@]}" "$api/programmes/..%2F..%2Fetc%2Fpasswd/audio"
http "$paths" "GET /receivers/..%2F..%2Fetc%2Fpasswd" reject "${auth[@]}" "$api/receivers/..%2F..%2Fetc%2Fpasswd"
http "$paths" "POST /receivers/..%2F..%2Fetc%2Fpasswd/token" reject "${auth[@]}" -X POST "$api/receivers/..%2F..%2Fetc%2Fpasswd/token"
http "$paths" "GET /receivers/%2B (MQTT wildcard \`+\`)" reject "${auth[@]}" "$api/receivers/%2B"
http "$paths" "POST /receivers \`{\"id\":\"../../etc/passwd\"}\`" reject "${auth[@]}" "${json[@]}" "$api/receivers" -d '{"id":"../../etc/passwd","name":"x","zone":"thon-1"}'
http "$paths" "POST /receivers \`{\"id\":\"loa/#\"}\`" reject "${auth[@]}" "${json[@]}" "$api/receivers" -d '{"id":"loa/#","name":"x","zone":"thon-1"}'
http "$paths" "POST /zones \`{\"id\":\"..\"}\`" reject "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id":"..","name":"x"}'
http "$paths" "GET /programmes/{id}/audio with \`Range: bytes=999999999-\`" reject "${auth[@]}" -H 'Range: bytes=999999999-' "$api/programmes/$programme/audio" -o /dev/null

j="JSON bodies"
http "$j" "malformed JSON \`{\"id\": \"x\",\`" reject "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id": "x",'
http "$j" "wrong field types \`{\"id\":5,\"name\":true}\`" reject "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id":5,"name":true}'
http "$j" "missing field \`{\"id\":\"thon-9\"}\`" reject "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id":"thon-9"}'
http "$j" "unknown field \`{\"id\":\"thon-8\",\"name\":\"x\",\"bogus\":1}\`" any "${auth[@]}" "${json[@]}" "$api/zones" -d '{"id":"thon-8","name":"x","bogus":1}'
http "$j" "JSON without \`Content-Type\`" reject "${auth[@]}" "$api/zones" -H 'Content-Type:' -d '{"id":"thon-7","name":"x"}'
head -c $((8 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$work/huge.json"
printf '{"id":"thon-6","name":"x"}' >>"$work/huge.json"
http "$j" "8 MiB JSON body (spaces, then a valid zone)" reject "${auth[@]}" "${json[@]}" "$api/zones" --data-binary "@$work/huge.json"
python3 -c 'print("["*100000 + "]"*100000)' >"$work/deep.json"
http "$j" "JSON nested 100 000 levels deep" reject "${auth[@]}" "${json[@]}" "$api/zones" --data-binary "@$work/deep.json"
http "$j" "invalid UTF-8 in a string" reject "${auth[@]}" "${json[@]}" "$api/zones" --data-binary $'{"id":"thon-5","name":"\xff\xfe"}'
http "$j" "PATCH /zones/thon-1 \`quiet_hours: \"25:00-99:99\"\`" reject "${auth[@]}" "${json[@]}" -X PATCH "$api/zones/thon-1" -d '{"quiet_hours":"25:00-99:99"}'
http "$j" "GET /plays?from=yesterday" reject "${auth[@]}" "$api/plays?from=yesterday"
http "$j" "GET /calendar over 400 days" reject "${auth[@]}" "$api/calendar?from=2026-01-01T00:00:00Z&to=2027-02-05T00:00:00Z"

a="authentication"
http "$a" "no \`Authorization\` header" reject "$api/zones"
http "$a" "garbage token \`Bearer not-a-token\`" reject -H 'Authorization: Bearer not-a-token' "$api/zones"
http "$a" "\`Authorization: Basic YWRtaW46YWRtaW4=\` (admin:admin)" reject -H 'Authorization: Basic YWRtaW46YWRtaW4=' "$api/zones"
expired=$(curl -s "$api/login" "${json[@]}" -d "{\"username\":\"admin\",\"password\":\"$password\"}" | jq -r .token)
hash=$(printf '%s' "$expired" | sha256sum | cut -d' ' -f1)
sqlite3 "$data/loa.db" "UPDATE sessions SET expires_at = 1 WHERE token_hash = '$hash'"
http "$a" "expired session token" reject -H "Authorization: Bearer $expired" "$api/zones"
revoked=$(curl -s "$api/login" "${json[@]}" -d "{\"username\":\"admin\",\"password\":\"$password\"}" | jq -r .token)
curl -s -X POST -H "Authorization: Bearer $revoked" "$api/logout" >/dev/null
http "$a" "token after \`POST /logout\`" reject -H "Authorization: Bearer $revoked" "$api/zones"
http "$a" "receiver's token on \`POST /zones\`" reject -H "Authorization: Bearer $receiver_token" "${json[@]}" "$api/zones" -d '{"id":"thon-4","name":"x"}'
ws=(-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==')
http "$a" "WebSocket \`GET /live/ws\` without a token" reject "${ws[@]}" "$api/live/ws?zones=thon-1"
http "$a" "WebSocket \`GET /live/ws\` with \`token=garbage\`" reject "${ws[@]}" "$api/live/ws?zones=thon-1&token=garbage"
http "$a" "login with a wrong password" reject "${json[@]}" "$api/login" -d '{"username":"admin","password":"wrong"}'

s="POST /schedules"
sched() { # sched INPUT EXPECT JSON-FRAGMENT (merged over a valid schedule)
    local body
    body=$(jq -c --argjson extra "$3" '. + $extra' <<<"{\"programme_id\":\"$programme\",\"targets\":{\"zones\":[\"thon-1\"]},\"start\":\"2027-01-05T06:30:00\",\"rrule\":\"FREQ=WEEKLY;BYDAY=TU,FR\"}")
    http "$s" "$1" "$2" "${auth[@]}" "${json[@]}" "$api/schedules" -d "$body"
}
sched "RRULE \`FREQ=FORTNIGHTLY\`" reject '{"rrule":"FREQ=FORTNIGHTLY"}'
sched "RRULE \`FREQ=SECONDLY\`" reject '{"rrule":"FREQ=SECONDLY"}'
sched "RRULE \`FREQ=WEEKLY;BYDAY=thứ\` (non-ASCII)" reject '{"rrule":"FREQ=WEEKLY;BYDAY=thứ"}'
sched "RRULE with \`DTSTART\` and a second line" reject '{"rrule":"DTSTART:20260101T000000\nRRULE:FREQ=DAILY"}'
every() { seq -s, "$1" "$2"; }
sched "RRULE every second of the year (\`FREQ=YEARLY\`, all BYMONTH/BYMONTHDAY/BYHOUR/BYMINUTE/BYSECOND)" reject \
    "{\"rrule\":\"FREQ=YEARLY;BYMONTH=$(every 1 12);BYMONTHDAY=$(every 1 31);BYHOUR=$(every 0 23);BYMINUTE=$(every 0 59);BYSECOND=$(every 0 59)\"}"
sched "RRULE \`FREQ=MINUTELY\` from 1970" reject '{"rrule":"FREQ=MINUTELY","start":"1970-01-01T00:00:00"}'
sched "one-off in the past (2020-01-01)" reject '{"rrule":null,"start":"2020-01-01T06:30:00"}'
sched "RRULE whose \`UNTIL\` is in the past" reject '{"rrule":"FREQ=DAILY;UNTIL=20200101"}'
sched "start with an offset \`2027-01-05T06:30:00+07:00\`" reject '{"start":"2027-01-05T06:30:00+07:00"}'
sched "start \`31/12/2026\`" reject '{"start":"31/12/2026"}'
sched "start in year 99999" reject '{"start":"99999-01-01T00:00:00"}'
sched "unknown time zone \`Asia/Hanoi\`" reject '{"timezone":"Asia/Hanoi"}'
sched "time zone \`../../etc/localtime\`" reject '{"timezone":"../../etc/localtime"}'
sched "start in a DST gap (Europe/Berlin 2027-03-28T02:30)" reject '{"timezone":"Europe/Berlin","start":"2027-03-28T02:30:00","rrule":null}'
sched "unknown target zone \`thon-404\`" reject '{"targets":{"zones":["thon-404"]}}'
sched "no targets" reject '{"targets":{"zones":[],"receivers":[]}}'
sched "unknown programme" reject '{"programme_id":"no-such-programme"}'
sched "priority \`urgent\`" reject '{"priority":"urgent"}'
sched "schedule id \`../x\`" reject '{"id":"../x"}'

b="POST /broadcasts"
http "$b" "relay of \`file:///etc/passwd\`" reject "${auth[@]}" "${json[@]}" "$api/broadcasts" -d '{"source":{"type":"relay","url":"file:///etc/passwd"},"targets":{"zones":["thon-1"]}}'
http "$b" "relay of a closed port \`http://127.0.0.1:9/\`" reject "${auth[@]}" "${json[@]}" "$api/broadcasts" -d '{"source":{"type":"relay","url":"http://127.0.0.1:9/"},"targets":{"zones":["thon-1"]}}'
http "$b" "source type \`shell\`" reject "${auth[@]}" "${json[@]}" "$api/broadcasts" -d '{"source":{"type":"shell","cmd":"id"},"targets":{"zones":["thon-1"]}}'
http "$b" "\`DELETE /broadcasts/not-a-uuid\`" reject "${auth[@]}" -X DELETE "$api/broadcasts/not-a-uuid"

# MQTT: the controller answers nothing on the wire; what it did is in its
# log and in the API. Each publish gets the log lines it caused.
m="MQTT"
mqtt() { # mqtt INPUT EXPECT TOPIC PAYLOAD-FILE [CHECK-COMMAND]
    local input=$1 expect=$2 topic=$3 file=$4 before answer rc
    before=$(wc -l <"$log")
    mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$topic" -f "$file" "${mqtt_auth[@]}" 2>"$work/pub.err"
    rc=$?
    sleep 1
    # The controller's own lines (not the broker's), without colours and time.
    answer=$(tail -n +"$((before + 1))" "$log" | sed -E 's/\x1b\[[0-9;]*m//g' |
        grep -E '^[^ ]+ +(WARN|ERROR|INFO) loa_controller' | sed -E 's/^[^ ]+ +//' |
        head -n 2 | tr '\n' ' ' | clip 260)
    [ $rc -ne 0 ] && answer="the broker closed the connection (mosquitto_pub: $(head -c 100 "$work/pub.err" | tr '\n' ' ')) $answer"
    kill -0 "$pid" 2>/dev/null || answer="CONTROLLER DIED: $answer"
    local status="log"
    kill -0 "$pid" 2>/dev/null || status=000
    row "$m" "$input" "$expect" "$status" "${answer:-(nothing logged)}"
}
# Garbage from an enrolled receiver (the broker lets it in: it logged in
# as loa-1 with its own token).
mqtt_auth=(-i loa-1 -u loa-1 -P "$receiver_token")
printf '{"receiver_id": "loa-1", "online": tru' >"$work/m1"
mqtt "malformed JSON on \`loa/v1/receivers/loa-1/status\`" reject loa/v1/receivers/loa-1/status "$work/m1"
printf '[1,2,3]' >"$work/m2"
mqtt "JSON of the wrong shape on \`…/loa-1/plays\`" reject loa/v1/receivers/loa-1/plays "$work/m2"
printf '{"receiver_id":"loa-1","online":true,"sent_at":"2026-12-01T00:00:00Z"}' >"$work/m3"
mqtt "valid status on a wrong topic \`loa/v1/receivers/loa-1/statuses\`" reject loa/v1/receivers/loa-1/statuses "$work/m3"
mqtt "valid status on \`loa/v1/receivers/loa-1/schedule\` (controller→receiver topic)" reject loa/v1/receivers/loa-1/schedule "$work/m3"
printf '{"receiver_id":"ghost","online":true,"sent_at":"2026-12-01T00:00:00Z"}' >"$work/m4"
mqtt "status of an unknown receiver \`ghost\`" reject loa/v1/receivers/ghost/status "$work/m4"
report() { printf '{"report_id":"%s","receiver_id":"%s","event_id":"e@1","programme_id":"%s","schedule_id":"s","scheduled_at":"2026-12-01T00:00:00Z","started_at":"2026-12-01T00:00:00Z","ended_at":"2026-12-01T00:00:10Z","outcome":"completed"}' "$1" "$2" "$programme"; }
report forged-1 loa-2 >"$work/m5"
mqtt "play report for receiver \`loa-2\` published on \`…/loa-1/plays\`" reject loa/v1/receivers/loa-1/plays "$work/m5"
head -c $((5 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$work/m6"
printf '{}' >>"$work/m6"
mqtt "5 MiB payload on \`…/loa-1/status\` (limit 4 MiB)" reject loa/v1/receivers/loa-1/status "$work/m6"
report forged-2 loa-1 >"$work/m7"
mqtt_auth=(-i "bad-input-$RANDOM")
mqtt "well-formed report from an anonymous client on \`…/loa-1/plays\`" reject loa/v1/receivers/loa-1/plays "$work/m7"
mqtt_auth=(-i loa-1 -u loa-1 -P "not-the-token")
mqtt "the same report as \`loa-1\` with a wrong password" reject loa/v1/receivers/loa-1/plays "$work/m7"
mqtt_auth=(-i loa-2 -u loa-1 -P "$receiver_token")
mqtt "the same report with loa-1's credentials under client id \`loa-2\`" reject loa/v1/receivers/loa-1/plays "$work/m7"
printf '{"forged":"retained schedule"}' >"$work/m8"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -r -t loa/v1/receivers/loa-1/schedule -f "$work/m8" -i "bad-input-$RANDOM" 2>/dev/null
retained=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t loa/v1/receivers/loa-1/schedule -C 1 -W 3 -i loa-1 -u loa-1 -P "$receiver_token" 2>/dev/null | head -c 200)
rows+=("| $m | retained \`{\"forged\":…}\` published by an anonymous client on \`…/loa-1/schedule\`, then read back as loa-1 | – | – | retained now: \`${retained:-nothing}\` | $([ "$retained" = "$(cat "$work/m8")" ] && echo '**finding**: a stranger replaced the retained schedule' || echo 'ok (refused at login)') |")
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -r -t loa/v1/receivers/loa-1/schedule -f "$work/m8" -i loa-1 -u loa-1 -P "$receiver_token" 2>/dev/null
retained=$(mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t loa/v1/receivers/loa-1/schedule -C 1 -W 3 -i loa-1 -u loa-1 -P "$receiver_token" 2>/dev/null | head -c 200)
rows+=("| $m | the same published retained by the enrolled receiver loa-1 itself | – | – | retained now: \`${retained:-nothing}\` | $([ "$retained" = "$(cat "$work/m8")" ] && echo 'known limit: the embedded broker has no topic ACLs; receivers refuse it as unsigned and keep their last signed schedule, the controller republishes on its next change; with Mosquitto, loa-controller mosquitto-acl denies it' || echo ok) |")
stored=$(curl -s "${auth[@]}" "$api/plays?receiver=loa-1" | jq 'if type == "array" then length else ((.plays // .items // []) | length) end' 2>/dev/null)
rows+=("| $m | → \`GET /plays?receiver=loa-1\` afterwards | 200 | – | ${stored:-?} play row(s) stored from the forged reports above | $([ "${stored:-0}" = 0 ] && echo ok || echo '**finding**: forged proof of play accepted (no MQTT authentication yet)') |")

kill -0 "$pid" 2>/dev/null && alive="still running" || alive="**died**"
panics=$(grep -c 'panicked' "$log")
rows+=("| all | controller process after every input above | – | – | $alive, $panics panic(s) in its log | $([ "$alive" = "still running" ] && [ "$panics" = 0 ] && echo ok || echo '**BUG**') |")

table=$(printf '%s\n' "| Surface | Bad input | Status | \`code\` | \`message_vi\` (or log line) | Verdict |" \
    "|---|---|---|---|---|---|" "${rows[@]}")
printf '%s\n' "$table"
echo
echo "bad-input: ${#rows[@]} rows, $bugs marked BUG (controller log: kept in the table; data dir removed)"
if [ $write = 1 ]; then
    TABLE=$table python3 - docs/bad-input.md <<'EOF'
import os, sys, re
path = sys.argv[1]
text = open(path).read()
begin, end = "<!-- BEGIN bad-input table -->", "<!-- END bad-input table -->"
if begin not in text or end not in text:
    sys.exit(f"{path}: the table markers are missing; table not written")
i, j = text.index(begin) + len(begin), text.index(end)
table = os.environ["TABLE"].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
updated = text[:i] + "\n" + table + "\n" + text[j:]
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write(updated)
os.replace(tmp, path)
EOF
    [ $? -eq 0 ] || exit 1
    echo "bad-input: table written to docs/bad-input.md"
fi
[ $bugs -eq 0 ]

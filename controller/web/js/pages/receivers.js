// Cụm loa: the loudspeakers on a map drawn from their latitude and
// longitude (an SVG, no map tiles: works offline), their status, what they
// play, their amplifier, and — for technicians — a volume slider (saved on
// release), a test tone, zones (with quiet hours), devices waiting for
// enrollment (accept with id, name and zone, or reject), new loudspeakers
// (their token is shown once) and positions.

import { get, post, patch, put } from "../api.js";
import { t } from "../i18n.js";
import { h, mount, card, empty, toast, attempt, dialog, fmtTime } from "../ui.js";

const W = 640;
const H = 400;
const PAD = 40;

function map(receivers, zones, titles) {
  const placed = receivers.filter((r) => r.lat != null && r.lon != null);
  const svg = h("svg", { class: "map", id: "receiver-map", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("Bản đồ") });
  if (!placed.length) {
    svg.append(h("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, t("Chưa có loa nào có toạ độ.")));
    return svg;
  }
  const lats = placed.map((r) => r.lat);
  const lons = placed.map((r) => r.lon);
  const midLat = (Math.min(...lats) + Math.max(...lats)) / 2;
  const k = Math.cos((midLat * Math.PI) / 180); // equirectangular: shrink longitudes
  const xs = lons.map((l) => l * k);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...lats), Math.max(...lats)];
  const span = Math.max(x1 - x0, y1 - y0, 0.002);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const scale = Math.min(W - 2 * PAD, H - 2 * PAD) / span;
  const px = (r) => W / 2 + (r.lon * k - cx) * scale;
  const py = (r) => H / 2 - (r.lat - cy) * scale;
  // A grid every ~100 m-ish step so distances read at a glance.
  for (let i = 1; i < 8; i++) {
    svg.append(h("line", { class: "grid-line", x1: (W * i) / 8, y1: 0, x2: (W * i) / 8, y2: H }));
    if (i < 5) svg.append(h("line", { class: "grid-line", x1: 0, y1: (H * i) / 5, x2: W, y2: (H * i) / 5 }));
  }
  // Width of the whole frame on the ground (1° of latitude ≈ 111.32 km).
  const widthKm = (W / scale) * 111.32;
  const width = widthKm < 1 ? `${Math.round(widthKm * 1000)} m` : `${widthKm.toFixed(1).replace(".", ",")} km`;
  svg.append(h("text", { x: 8, y: H - 8 }, `${t("Chiều rộng khung")} ≈ ${width}`));
  const zoneName = new Map(zones.map((z) => [z.id, z.name]));
  for (const r of placed) {
    const state = r.now_playing ? "playing" : r.online ? "online" : "offline";
    svg.append(
      h(
        "g",
        { "data-receiver": r.id },
        h("title", {}, `${r.name} — ${zoneName.get(r.zone) || r.zone} — ${t(r.online ? "Trực tuyến" : "Ngoại tuyến")}${r.now_playing ? ` — ${titles.get(r.now_playing.programme_id) || ""}` : ""}`),
        h("circle", { class: `dot-${state}`, cx: px(r).toFixed(1), cy: py(r).toFixed(1), r: 9 }),
        h("text", { x: (px(r) + 12).toFixed(1), y: (py(r) + 4).toFixed(1) }, r.name),
      ),
    );
  }
  return svg;
}

async function editPosition(r, reload) {
  const lat = h("input", { type: "number", step: "0.000001", value: r.lat ?? "", id: "pos-lat" });
  const lon = h("input", { type: "number", step: "0.000001", value: r.lon ?? "", id: "pos-lon" });
  const ok = await dialog(`${t("Toạ độ")}: ${r.name}`, h("div", { class: "form-grid" }, h("label", {}, t("Vĩ độ"), lat), h("label", {}, t("Kinh độ"), lon)), [
    { label: t("Huỷ"), value: null },
    { label: t("Lưu"), value: "yes", class: "primary" },
  ]);
  if (!ok) return;
  await attempt(async () => {
    await patch(`/receivers/${encodeURIComponent(r.id)}`, {
      lat: lat.value === "" ? null : Number(lat.value),
      lon: lon.value === "" ? null : Number(lon.value),
    });
    await reload();
  });
}

async function editZone(z, reload) {
  const name = h("input", { value: z.name });
  const quiet = h("input", { value: z.quiet_hours || "", placeholder: "22:00-05:30", id: "zone-quiet" });
  const ok = await dialog(`${t("Khu vực")}: ${z.name}`, h("div", { class: "form-grid" }, h("label", {}, t("Tên"), name), h("label", {}, t("Giờ yên lặng"), quiet)), [
    { label: t("Huỷ"), value: null },
    { label: t("Lưu"), value: "yes", class: "primary" },
  ]);
  if (!ok) return;
  await attempt(async () => {
    await patch(`/zones/${encodeURIComponent(z.id)}`, { name: name.value, quiet_hours: quiet.value });
    await reload();
  });
}

function technicianForms(data, reload) {
  const zid = h("input", { name: "id", placeholder: "thon-3", required: true });
  const zname = h("input", { name: "name", placeholder: "Thôn 3", required: true });
  const zquiet = h("input", { name: "quiet", placeholder: "22:00-05:30" });
  const addZone = h("button", { class: "primary", type: "button" }, t("Thêm khu vực"));
  addZone.addEventListener("click", () =>
    attempt(async () => {
      await post("/zones", { id: zid.value.trim(), name: zname.value, quiet_hours: zquiet.value || null });
      toast(t("Đã thêm khu vực."));
      await reload();
    }),
  );
  const rid = h("input", { name: "id", placeholder: "loa-cho", required: true });
  const rname = h("input", { name: "name", placeholder: "Loa cổng chợ", required: true });
  const rzone = h("select", {}, data.zones.map((z) => h("option", { value: z.id }, z.name)));
  const addReceiver = h("button", { class: "primary", type: "button" }, t("Thêm cụm loa"));
  addReceiver.addEventListener("click", () =>
    attempt(async () => {
      const r = await post("/receivers", { id: rid.value.trim(), name: rname.value, zone: rzone.value });
      await dialog(t("Mã bí mật của cụm loa"), [h("p", {}, t("Chỉ hiện một lần. Hãy ghi vào cấu hình thiết bị (LOA_RECEIVER_TOKEN).")), h("p", { class: "token-box" }, r.token)], [{ label: "OK", value: "ok", class: "primary" }]);
      await reload();
    }),
  );
  return h(
    "div",
    { class: "grid two" },
    card(t("Thêm khu vực"), h("div", { class: "form-grid" }, h("label", {}, t("Mã"), zid), h("label", {}, t("Tên"), zname), h("label", {}, t("Giờ yên lặng"), zquiet)), h("div", { class: "row" }, addZone)),
    card(t("Thêm cụm loa"), h("div", { class: "form-grid" }, h("label", {}, t("Mã"), rid), h("label", {}, t("Tên"), rname), h("label", {}, t("Khu vực"), rzone)), h("div", { class: "row" }, addReceiver)),
  );
}

/** "Loa: đang bật / đang tắt / không rõ" from the receiver's last status. */
function amplifier(r) {
  const [state, text] = r.amplifier_on === true ? ["on", "đang bật"] : r.amplifier_on === false ? ["off", "đang tắt"] : ["unknown", "không rõ"];
  return h("span", { class: `amp amp-${state}`, "data-amplifier": state }, `${t("Loa")}: ${t(text)}`);
}

// The last result of each receiver's controls, kept for a while so the
// list's periodic refresh does not wipe it.
const results = new Map();
const RESULT_MS = 15000;
// When a slider last moved: the list is not refreshed under a moving hand.
let lastSlide = 0;
let holding = false;
window.addEventListener("pointerup", () => (holding = false));

/** Why a receiver refused a message (its reason codes, see README "Signed messages"). */
const REJECTION_REASONS = {
  malformed: "sai định dạng hoặc không có chữ ký",
  bad_signature: "sai chữ ký (giả mạo hoặc bị sửa)",
  wrong_topic: "ký cho chủ đề khác",
  replayed: "tin cũ bị phát lại",
  stale: "quá hạn",
  bad_frame_signature: "khung âm thanh trực tiếp sai chữ ký",
  stale_frame: "khung âm thanh trực tiếp quá hạn",
};

/**
 * Messages the receiver refused lately (forged, altered, replayed, stale):
 * a warning with the newest ones, or nothing when there are none.
 */
function rejections(r) {
  const list = r.rejected_messages || [];
  if (!list.length) return null;
  const newest = list.slice(-5).reverse();
  return h(
    "details",
    { class: "rejections", "data-rejections": list.length },
    h("summary", {}, `⚠ ${t("{n} tin nhắn bị từ chối", { n: list.length })}`),
    h(
      "ul",
      {},
      newest.map((x) => h("li", {}, `${fmtTime(x.at)} · ${t(REJECTION_REASONS[x.reason] || x.reason)} · `, h("code", {}, x.topic))),
    ),
  );
}

/** The volume slider (saved when released) and the test tone button. */
function controls(r, reload, followTone) {
  const value = r.volume ?? 100;
  const result = h("small", { class: "control-result", role: "status", "aria-live": "polite" });
  const show = (text, kind) => {
    result.textContent = text;
    result.className = `control-result ${kind || ""}`.trim();
    results.set(r.id, { text, kind, at: Date.now() });
  };
  const kept = results.get(r.id);
  if (kept && Date.now() - kept.at < RESULT_MS) show(kept.text, kept.kind);
  // One slider per level; releasing either saves both (the API takes the
  // normal volume always, the emergency one when given).
  const emergencyValue = r.emergency_volume ?? 100;
  const sliders = [];
  const slider = volumeSlider(r, "volume", value, t("Âm lượng"), (saved) => t("Đã lưu âm lượng {v}%.", { v: saved.volume }));
  const emergency = volumeSlider(r, "emergency", emergencyValue, t("Âm lượng khẩn cấp"), (saved) =>
    t("Đã lưu âm lượng khẩn cấp {v}%.", { v: saved.emergency_volume }),
  );
  function volumeSlider(r, kind, initial, label, savedText) {
    const shown = h("output", { class: "volume-value" }, `${initial}%`);
    const input = h("input", {
      type: "range",
      min: 0,
      max: 100,
      step: 1,
      value: initial,
      class: kind === "volume" ? "volume" : "emergency-volume",
      "aria-label": `${label} ${r.name}`,
      "data-receiver": r.id,
    });
    input.addEventListener("input", () => {
      lastSlide = Date.now();
      shown.textContent = `${input.value}%`;
    });
    input.addEventListener("pointerdown", () => (holding = true));
    input.addEventListener("change", async () => {
      holding = false;
      sliders.forEach((x) => (x.input.disabled = true));
      show(t("Đang lưu…"));
      try {
        const body = { volume: Number(slider.input.value) };
        if (kind === "emergency" || r.emergency_volume != null) body.emergency_volume = Number(emergency.input.value);
        const saved = await put(`/receivers/${encodeURIComponent(r.id)}/volume`, body);
        show(savedText(saved), "ok");
      } catch (e) {
        show(e.message || t("Có lỗi xảy ra."), "error");
        input.value = initial;
        shown.textContent = `${initial}%`;
      } finally {
        sliders.forEach((x) => (x.input.disabled = false));
      }
    });
    const made = { input, label: h("label", { class: "volume-label" }, label, input, shown) };
    sliders.push(made);
    return made;
  }
  const tone = h("button", { class: "small", type: "button", "data-test-tone": r.id }, t("Phát âm thử"));
  tone.addEventListener("click", async () => {
    tone.disabled = true;
    try {
      await post(`/receivers/${encodeURIComponent(r.id)}/test-tone`, { seconds: 5 });
      show(t("Đã gửi lệnh phát âm thử 5 giây."), "ok");
      followTone();
    } catch (e) {
      show(e.message || t("Có lỗi xảy ra."), "error");
    } finally {
      setTimeout(() => (tone.disabled = false), 2000);
    }
  });
  return h(
    "div",
    { class: "receiver-controls" },
    slider.label,
    emergency.label,
    tone,
    result,
  );
}

/** Accept a device waiting for enrollment: choose its id, name and zone. */
async function acceptEnrollment(e, zones, reload) {
  const id = h("input", { value: e.requested_id || "", placeholder: "loa-cho", id: "enroll-id" });
  const name = h("input", { placeholder: "Loa cổng chợ", id: "enroll-name" });
  const zone = h("select", { id: "enroll-zone" }, zones.map((z) => h("option", { value: z.id }, z.name)));
  const ok = await dialog(
    `${t("Chấp nhận thiết bị")} ${e.code}`,
    [
      h("p", {}, t("Chỉ chấp nhận khi mã này giống hệt mã hiện trên thiết bị.")),
      h("p", { class: "token-box" }, e.code),
      h("div", { class: "form-grid" }, h("label", {}, t("Mã"), id), h("label", {}, t("Tên"), name), h("label", {}, t("Khu vực"), zone)),
    ],
    [
      { label: t("Huỷ"), value: null },
      { label: t("Chấp nhận"), value: "yes", class: "primary" },
    ],
  );
  if (!ok) return;
  await attempt(async () => {
    await post(`/enrollments/${encodeURIComponent(e.code)}/accept`, { id: id.value.trim(), name: name.value, zone: zone.value });
    toast(t("Đã chấp nhận thiết bị. Thiết bị sẽ kết nối trong vài giây."));
    await reload();
  });
}

async function rejectEnrollment(e, reload) {
  const ok = await dialog(`${t("Từ chối thiết bị")} ${e.code}`, h("p", {}, t("Thiết bị này sẽ không thể đăng ký lại với khóa hiện tại.")), [
    { label: t("Huỷ"), value: null },
    { label: t("Từ chối"), value: "yes", class: "danger" },
  ]);
  if (!ok) return;
  await attempt(async () => {
    await post(`/enrollments/${encodeURIComponent(e.code)}/reject`, {});
    toast(t("Đã từ chối thiết bị."));
    await reload();
  });
}

/** Devices waiting for enrollment (technicians and admins). */
function enrollments(data, reload) {
  const items = data.enrollments.map((e) =>
    h(
      "li",
      { id: `enroll-${e.code}`, "data-enrollment": e.code },
      h(
        "div",
        { class: "main" },
        h("b", { class: "enroll-code" }, e.code),
        h("small", {}, `${e.hostname}${e.remote_addr ? ` · ${e.remote_addr}` : ""} · ${fmtTime(e.created_at)}${e.requested_id ? ` · ${t("Mã đề nghị")}: ${e.requested_id}` : ""}`),
      ),
      h(
        "div",
        { class: "actions" },
        h("button", { class: "small primary", type: "button", "data-accept": e.code, onclick: () => acceptEnrollment(e, data.zones, reload) }, t("Chấp nhận")),
        h("button", { class: "small", type: "button", "data-reject": e.code, onclick: () => rejectEnrollment(e, reload) }, t("Từ chối")),
      ),
    ),
  );
  return card(
    t("Thiết bị chờ đăng ký"),
    items.length ? h("ul", { class: "list", id: "enrollment-list" }, items) : empty(t("Không có thiết bị nào chờ đăng ký.")),
  );
}

function view(ctx, data, reload, followTone) {
  const tech = ctx.me.permissions.manage_devices;
  const titles = new Map(data.programmes.map((p) => [p.id, p.title]));
  const zoneName = new Map(data.zones.map((z) => [z.id, z.name]));
  const items = data.receivers.map((r) =>
    h(
      "li",
      { id: `rcv-${r.id}`, "data-online": r.online },
      h(
        "div",
        { class: "main" },
        h("b", {}, r.name),
        h("small", {}, `${r.id} · ${zoneName.get(r.zone) || r.zone} · ${t("Lần cuối")}: ${fmtTime(r.last_seen)}`),
        h("br"),
        h("small", {}, r.now_playing ? `▶ ${titles.get(r.now_playing.programme_id) || t("Phát trực tiếp")}` : `${t("Bộ nhớ")}: ${r.cached.length} ${t("chương trình")}`, r.lat != null ? ` · ${r.lat.toFixed(5)}, ${r.lon.toFixed(5)}` : ` · ${t("Chưa có toạ độ")}`),
      ),
      h("span", { class: `badge ${r.online ? "online" : "offline"}` }, t(r.online ? "Trực tuyến" : "Ngoại tuyến")),
      amplifier(r),
      rejections(r),
      tech ? h("div", { class: "actions" }, h("button", { class: "small", onclick: () => editPosition(r, reload) }, t("Toạ độ"))) : null,
      tech ? controls(r, reload, followTone) : null,
    ),
  );
  const zones = data.zones.map((z) =>
    h(
      "li",
      { id: `zone-${z.id}` },
      h("div", { class: "main" }, h("b", {}, z.name), h("small", {}, `${z.id} · ${z.receivers} ${t("loa")}${z.quiet_hours ? ` · ${t("Giờ yên lặng")} ${z.quiet_hours}` : ""}`)),
      tech ? h("div", { class: "actions" }, h("button", { class: "small", onclick: () => editZone(z, reload) }, t("Sửa"))) : null,
    ),
  );
  const online = data.receivers.filter((r) => r.online).length;
  return [
    h(
      "div",
      { class: "grid three" },
      card(
        `${t("Bản đồ")} · ${online}/${data.receivers.length} ${t("Trực tuyến").toLowerCase()}`,
        map(data.receivers, data.zones, titles),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-online" }), t("Trực tuyến")), h("span", {}, h("i", { class: "l-playing" }), t("Đang phát")), h("span", {}, h("i", { class: "l-offline" }), t("Ngoại tuyến"))),
      ),
      card(t("Khu vực"), zones.length ? h("ul", { class: "list" }, zones) : empty(t("Chưa có khu vực nào."))),
    ),
    card(t("Cụm loa"), items.length ? h("ul", { class: "list", id: "receiver-list" }, items) : empty(t("Chưa có cụm loa nào."))),
    tech ? enrollments(data, reload) : null,
  ];
}

export async function render(root, ctx) {
  const load = async () => {
    const tech = ctx.me.permissions.manage_devices;
    const [receivers, zones, programmes, enrollments] = await Promise.all([
      get("/receivers"),
      get("/zones"),
      get("/programmes"),
      tech ? get("/enrollments") : Promise.resolve([]),
    ]);
    return { receivers, zones, programmes, enrollments };
  };
  const status = h("div");
  const forms = h("div");
  // After a test tone the list refreshes every second for a while, so the
  // amplifier's state shows as the receiver reports it.
  let fastUntil = 0;
  const followTone = () => (fastUntil = Date.now() + 15000);
  // The status part refreshes by itself (not while a slider is being
  // moved, i.e. within 3 s of its last movement); the forms only after a change, so typing is never interrupted.
  const busy = () => holding || Date.now() - lastSlide < 3000;
  const refresh = async () => {
    const data = await load();
    if (!busy()) mount(status, view(ctx, data, reload, followTone));
  };
  const reload = async () => {
    const data = await load();
    mount(status, view(ctx, data, reload, followTone));
    mount(forms, ctx.me.permissions.manage_devices ? technicianForms(data, reload) : null);
  };
  await reload();
  mount(root, status, forms);
  let last = Date.now();
  const timer = setInterval(() => {
    const every = Date.now() < fastUntil ? 1000 : 10000;
    if (Date.now() - last < every) return;
    last = Date.now();
    refresh().catch(() => {});
  }, 500);
  return () => clearInterval(timer);
}

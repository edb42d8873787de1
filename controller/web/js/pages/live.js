// Phát trực tiếp: the big emergency button (two clicks from anywhere in
// the console: the top bar's "Khẩn cấp", then "Bắt đầu phát"), speaking
// live from the browser's microphone to chosen zones, relaying a radio
// stream, and the broadcasts on air.

import { get, post, del } from "../api.js";
import { t } from "../i18n.js";
import { h, mount, card, empty, toast, attempt, dialog, fmtClock, zonePicker, checkedValues } from "../ui.js";
import { startLive } from "../mic.js";

// The broadcast from this browser survives page changes.
let current = null; // { handle, priority, started: Date, broadcast, state }
const listeners = new Set();

function setState(patch) {
  current = current ? { ...current, ...patch } : patch;
  for (const f of listeners) f();
}

async function begin(zones, priority) {
  if (current && current.state !== "ended") {
    toast(t("Đang có một buổi phát từ trình duyệt này."), "error");
    return;
  }
  if (!zones.length) {
    toast(t("Hãy chọn ít nhất một khu vực."), "error");
    return;
  }
  setState({ state: "connecting", priority, zones, started: null, broadcast: null, level: 0 });
  try {
    const handle = await startLive(
      { zones, receivers: [], priority },
      {
        state: (name, detail) => {
          if (name === "on-air") setState({ state: "on-air", broadcast: detail, started: new Date() });
          else if (name === "ended") {
            setState({ state: "ended", handle: null });
            toast(t("Đã dừng phát trực tiếp."));
          } else if (name === "error") {
            setState({ state: "ended", handle: null });
            toast(detail || t("Có lỗi xảy ra."), "error");
          }
        },
        level: (peak) => {
          if (current) current.level = peak;
        },
      },
    );
    setState({ handle });
  } catch (e) {
    setState({ state: "ended", handle: null });
    toast(e.message || t("Có lỗi xảy ra."), "error");
  }
}

async function confirmEmergency(zones, zoneNames) {
  const choice = await dialog(
    `⚠ ${t("PHÁT KHẨN CẤP")}`,
    [
      h("p", {}, t("Micrô của máy này sẽ được phát ngay tới {n} khu vực, với âm lượng khẩn cấp, ngắt mọi bản tin đang phát:", { n: zones.length })),
      h("p", {}, h("b", {}, zoneNames.join(", "))),
    ],
    [
      { label: t("Huỷ"), value: null },
      { label: t("Bắt đầu phát"), value: "start", class: "danger" },
    ],
  );
  if (choice === "start") await begin(zones, "emergency");
}

export async function render(root, ctx) {
  const perms = ctx.me.permissions;
  const zones = await get("/zones");
  const zoneNames = (ids) => ids.map((id) => zones.find((z) => z.id === id)?.name || id);
  const picker = zonePicker(zones, "live-zone");
  const chosen = () => checkedValues(picker, "live-zone");
  const airBox = h("div", { id: "on-air-box" });
  const listBox = h("div");

  const drawAir = () => {
    if (!current || current.state === "ended") {
      mount(airBox);
      return;
    }
    const meterFill = h("div", { id: "level" });
    const clock = h("b", { id: "on-air-clock" }, "0:00");
    const section = card(
      null,
      h("h2", {}, current.state === "on-air" ? `● ${t("Đang phát trực tiếp")}${current.priority === "emergency" ? ` — ${t("Khẩn cấp")}` : ""}` : t("Đang kết nối…")),
      h("p", {}, zoneNames(current.zones || []).join(", "), " · ", clock),
      h("div", { class: "meter", "aria-hidden": "true" }, meterFill),
      h("p", {}, h("button", { class: "danger big-live", id: "stop-live", onclick: () => current?.handle?.stop() }, `■ ${t("Dừng phát")}`)),
    );
    section.classList.add("on-air");
    section.id = "on-air";
    section.dataset.state = current.state;
    mount(airBox, section);
  };
  listeners.add(drawAir);
  const tick = setInterval(() => {
    const clock = document.getElementById("on-air-clock");
    const fill = document.getElementById("level");
    if (current?.started && clock) {
      const s = Math.floor((Date.now() - current.started) / 1000);
      clock.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }
    if (fill && current) fill.style.width = `${Math.min(100, Math.round((current.level || 0) * 140))}%`;
  }, 100);

  const drawList = async () => {
    const list = await get("/broadcasts").catch(() => []);
    mount(
      listBox,
      card(
        t("Các buổi phát đang diễn ra"),
        list.length
          ? h(
              "ul",
              { class: "list", id: "broadcast-list" },
              list.map((b) =>
                h(
                  "li",
                  { "data-id": b.id },
                  h("span", { class: `badge ${b.priority}` }, b.priority === "emergency" ? t("Khẩn cấp") : b.source.type === "relay" ? t("Tiếp sóng") : t("Trực tiếp")),
                  h("div", { class: "main" }, h("b", {}, [...zoneNames(b.targets.zones), ...b.targets.receivers].join(", ")), h("small", {}, `${t("từ")} ${fmtClock(b.started_at)} · ${b.created_by}${b.source.url ? ` · ${b.source.url}` : ""}`)),
                  perms.broadcast ? h("button", { class: "small", onclick: () => attempt(async () => { await del(`/broadcasts/${b.id}`); await drawList(); }) }, t("Dừng phát")) : null,
                ),
              ),
            )
          : empty(t("Không có buổi phát nào.")),
      ),
    );
  };
  await drawList();
  const poll = setInterval(() => drawList().catch(() => {}), 5000);

  let controls = null;
  if (perms.broadcast) {
    const priority = h("select", { id: "live-priority" }, h("option", { value: "normal" }, t("Thường")), h("option", { value: "priority" }, t("Quan trọng")));
    const url = h("input", { type: "url", id: "relay-url", placeholder: "http://…/stream.mp3" });
    const minutes = h("input", { type: "number", id: "relay-minutes", min: 1, max: 1440, value: 30 });
    controls = [
      card(
        null,
        h("button", { class: "big-emergency", id: "emergency", onclick: () => confirmEmergency(chosen(), zoneNames(chosen())) }, `⚠ ${t("PHÁT KHẨN CẤP")}`),
        h("fieldset", {}, h("legend", {}, t("Nơi phát")), picker),
        h("div", { class: "row" }, h("label", {}, t("Mức ưu tiên"), priority), h("button", { class: "primary big-live", id: "go-live", onclick: () => begin(chosen(), priority.value) }, `● ${t("Phát trực tiếp từ micrô")}`)),
      ),
      card(
        t("Tiếp sóng đài"),
        h("div", { class: "form-grid" }, h("label", {}, t("Địa chỉ luồng"), url), h("label", {}, t("Thời lượng (phút)"), minutes)),
        h(
          "div",
          { class: "row" },
          h(
            "button",
            {
              class: "primary",
              id: "relay-start",
              onclick: () =>
                attempt(async () => {
                  await post("/broadcasts", { source: { type: "relay", url: url.value.trim() }, targets: { zones: chosen(), receivers: [] }, priority: priority.value, duration_ms: Math.round(Number(minutes.value || 30) * 60000) });
                  toast(t("Đã bắt đầu tiếp sóng."));
                  await drawList();
                }),
            },
            t("Bắt đầu tiếp sóng"),
          ),
        ),
      ),
    ];
  }
  mount(root, airBox, controls, listBox);
  drawAir();

  if (perms.broadcast && ctx.params.get("khan-cap") === "1") {
    history.replaceState(null, "", "#/truc-tiep");
    setTimeout(() => confirmEmergency(chosen(), zoneNames(chosen())), 0);
  }
  return () => {
    listeners.delete(drawAir);
    clearInterval(tick);
    clearInterval(poll);
  };
}

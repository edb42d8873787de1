// Tổng quan: receivers online and offline, what is playing where, the
// next broadcasts, and alerts (receivers offline, plays failed or missed
// in the last 24 hours, items awaiting approval). Refreshes every 10 s.

import { get } from "../api.js";
import { t } from "../i18n.js";
import { h, mount, card, empty, fmtTime, fmtClock } from "../ui.js";

const REFRESH_MS = 10000;

async function load(me) {
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const [receivers, zones, programmes, schedules, plays, broadcasts] = await Promise.all([
    get("/receivers"),
    get("/zones"),
    get("/programmes"),
    get("/schedules"),
    get(`/plays?from=${encodeURIComponent(since)}`),
    get("/broadcasts").catch(() => []),
  ]);
  return { me, receivers, zones, programmes, schedules, plays, broadcasts };
}

function view(d) {
  const online = d.receivers.filter((r) => r.online);
  const offline = d.receivers.filter((r) => !r.online);
  const titles = new Map(d.programmes.map((p) => [p.id, p.title]));
  const zoneName = new Map(d.zones.map((z) => [z.id, z.name]));
  const receiverName = new Map(d.receivers.map((r) => [r.id, r.name]));
  const pending = d.programmes.filter((p) => p.status === "pending").length + d.schedules.filter((s) => s.status === "pending").length;

  const playing = d.receivers
    .filter((r) => r.now_playing)
    .map((r) =>
      h("li", {}, h("div", { class: "main" }, h("b", {}, titles.get(r.now_playing.programme_id) || r.now_playing.programme_id || t("Phát trực tiếp")), h("small", {}, `${r.name} · ${zoneName.get(r.zone) || r.zone}`))),
    );
  for (const b of d.broadcasts || []) {
    const where = [...(b.targets?.zones || []).map((z) => zoneName.get(z) || z), ...(b.targets?.receivers || []).map((r) => receiverName.get(r) || r)];
    playing.unshift(
      h("li", {}, h("span", { class: `badge ${b.priority === "emergency" ? "emergency" : ""}` }, b.priority === "emergency" ? t("Khẩn cấp") : t("Phát trực tiếp")), h("div", { class: "main" }, h("b", {}, where.join(", ")), h("small", {}, `${t("từ")} ${fmtClock(b.started_at)} · ${b.created_by || ""}`))),
    );
  }

  const upcoming = [];
  for (const s of d.schedules) {
    if (s.status !== "approved") continue;
    for (const at of s.next_occurrences || []) upcoming.push({ at, s });
  }
  upcoming.sort((a, b) => a.at.localeCompare(b.at));

  const alerts = [];
  for (const r of offline) {
    alerts.push(h("li", {}, h("span", { class: "badge offline" }, t("mất kết nối")), h("div", { class: "main" }, h("b", {}, r.name), h("small", {}, `${zoneName.get(r.zone) || r.zone} · ${t("Lần cuối")}: ${fmtTime(r.last_seen)}`))));
  }
  for (const p of d.plays.filter((p) => p.outcome === "failed" || p.outcome === "missed")) {
    alerts.push(
      h("li", {}, h("span", { class: `badge ${p.outcome}` }, t(p.outcome === "failed" ? "phát thất bại" : "không phát được")), h("div", { class: "main" }, h("b", {}, titles.get(p.programme_id) || p.programme_id), h("small", {}, `${receiverName.get(p.receiver_id) || p.receiver_id} · ${fmtTime(p.scheduled_at)}${p.detail ? " · " + p.detail : ""}`))),
    );
  }
  if (pending && d.me.permissions.approve) {
    alerts.unshift(h("li", {}, h("span", { class: "badge status-pending" }, t("Chờ duyệt")), h("div", { class: "main" }, h("b", {}, t("{n} mục đang chờ duyệt", { n: pending }))), h("a", { href: "#/chuong-trinh?status=pending" }, t("Xem"))));
  }

  return [
    h(
      "div",
      { class: "stats" },
      h("div", { class: "stat ok", id: "stat-online" }, h("b", {}, online.length), t("Loa đang hoạt động")),
      h("div", { class: `stat ${offline.length ? "bad" : ""}`, id: "stat-offline" }, h("b", {}, offline.length), t("Loa mất kết nối")),
      h("div", { class: "stat" }, h("b", {}, playing.length), t("Đang phát")),
      h("div", { class: `stat ${pending ? "warn" : ""}` }, h("b", {}, pending), t("Chờ duyệt")),
    ),
    h(
      "div",
      { class: "grid two" },
      card(t("Đang phát"), playing.length ? h("ul", { class: "list" }, playing) : empty(t("Không có gì đang phát."))),
      card(t("Cảnh báo"), alerts.length ? h("ul", { class: "list", id: "alerts" }, alerts) : empty(t("Không có cảnh báo."))),
    ),
    card(
      t("Sắp phát"),
      upcoming.length
        ? h(
            "ul",
            { class: "list" },
            upcoming.slice(0, 8).map(({ at, s }) =>
              h("li", {}, h("div", { class: "main" }, h("b", {}, titles.get(s.programme_id) || t("Tiếp sóng")), h("small", {}, [...s.targets.zones.map((z) => zoneName.get(z) || z), ...s.targets.receivers.map((r) => receiverName.get(r) || r)].join(", "))), h("span", {}, fmtTime(at))),
            ),
          )
        : empty(t("Không có lịch phát sắp tới.")),
    ),
  ];
}

export async function render(root, ctx) {
  mount(root, view(await load(ctx.me)));
  const timer = setInterval(async () => {
    try {
      mount(root, view(await load(ctx.me)));
    } catch {
      /* shown on the next successful refresh */
    }
  }, REFRESH_MS);
  return () => clearInterval(timer);
}

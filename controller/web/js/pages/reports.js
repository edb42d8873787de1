// Báo cáo: proof of play by week and unit (totals, a chart by day, by
// zone, every play), and the digital-transformation bulletin report (at
// least two a week per commune) with its chart; both export CSV.

import { get, blob } from "../api.js";
import { t } from "../i18n.js";
import { h, mount, card, empty, attempt, download, fmtTime, localParts } from "../ui.js";

const OUTCOMES = [
  ["completed", "Hoàn thành"],
  ["preempted", "Bị ngắt"],
  ["missed", "Bỏ lỡ"],
  ["failed", "Lỗi"],
];
const WEEKDAYS = ["T2", "T3", "T4", "T5", "T6", "T7", "CN"];

/** ISO week of a local date, "2026-W48". */
function isoWeek(dateText) {
  const d = new Date(`${dateText}T00:00:00Z`);
  const day = (d.getUTCDay() + 6) % 7;
  d.setUTCDate(d.getUTCDate() - day + 3); // Thursday of this week
  const year = d.getUTCFullYear();
  const jan4 = new Date(Date.UTC(year, 0, 4));
  const week = 1 + Math.round(((d - jan4) / 86400000 - 3 + ((jan4.getUTCDay() + 6) % 7)) / 7);
  return `${year}-W${String(week).padStart(2, "0")}`;
}

function unitSelect(units, id) {
  return h(
    "select",
    { id },
    units.filter((u) => u.in_scope).map((u) => h("option", { value: u.id }, `${"· ".repeat(["root", "province", "district", "commune"].indexOf(u.kind))}${u.name}`)),
  );
}

function dayChart(days) {
  const W = 560, H = 220, left = 34, bottom = 28, top = 12;
  const max = Math.max(1, ...days.map((d) => d.total));
  const bw = (W - left - 10) / 7;
  const y = (v) => H - bottom - ((H - bottom - top) * v) / max;
  const svg = h("svg", { class: "chart", id: "day-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("Số lần phát theo ngày") });
  svg.append(h("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  for (const v of [0, Math.ceil(max / 2), max]) svg.append(h("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  days.forEach((d, i) => {
    const x = left + i * bw + bw * 0.2;
    const w = bw * 0.6;
    const other = d.total - d.completed;
    svg.append(h("rect", { class: "bar-completed", x, y: y(d.completed), width: w, height: H - bottom - y(d.completed) }, h("title", {}, `${t("Hoàn thành")}: ${d.completed}`)));
    if (other > 0) svg.append(h("rect", { class: "bar-other", x, y: y(d.total), width: w, height: y(d.completed) - y(d.total) }, h("title", {}, `${t("Khác")}: ${other}`)));
    svg.append(h("text", { x: x + w / 2, y: H - 10, "text-anchor": "middle" }, WEEKDAYS[i]));
  });
  return svg;
}

async function playsTab(box, units) {
  const week = h("input", { type: "week", id: "report-week", value: isoWeek(localParts(new Date()).date) });
  const unit = unitSelect(units, "report-unit");
  const out = h("div", { id: "plays-report" });
  const query = () => `week=${encodeURIComponent(week.value)}&unit=${encodeURIComponent(unit.value)}`;
  const load = async () => {
    const r = await get(`/reports/plays?${query()}`);
    mount(
      out,
      h(
        "div",
        { class: "stats" },
        h("div", { class: "stat" }, h("b", { id: "plays-total" }, r.totals.total), t("Tổng")),
        h("div", { class: "stat ok" }, h("b", { id: "plays-completed" }, r.totals.completed), t("Hoàn thành")),
        h("div", { class: "stat warn" }, h("b", {}, r.totals.preempted), t("Bị ngắt")),
        h("div", { class: `stat ${r.totals.missed + r.totals.failed ? "bad" : ""}` }, h("b", {}, r.totals.missed + r.totals.failed), `${t("Bỏ lỡ")} / ${t("Lỗi")}`),
      ),
      card(t("Số lần phát theo ngày"), dayChart(r.by_day), h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-online" }), t("Hoàn thành")), h("span", {}, h("i", { class: "l-other" }), t("Khác")))),
      card(
        t("Theo khu vực"),
        r.by_zone.length
          ? h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, t("Khu vực")), h("th", {}, t("Đơn vị")), OUTCOMES.map(([, l]) => h("th", { class: "num" }, t(l))), h("th", { class: "num" }, t("Tổng")))), h("tbody", {}, r.by_zone.map((z) => h("tr", {}, h("td", {}, z.zone_name || z.zone_id), h("td", {}, z.unit_name || ""), OUTCOMES.map(([k]) => h("td", { class: "num" }, z[k])), h("td", { class: "num" }, z.total))))))
          : empty(t("Chưa có lần phát nào trong tuần này.")),
      ),
      card(
        t("Chi tiết"),
        r.plays.length
          ? h("div", { class: "table-wrap" }, h("table", { id: "plays-table" }, h("thead", {}, h("tr", {}, h("th", {}, t("Thời điểm")), h("th", {}, t("Chương trình")), h("th", {}, t("Cụm loa")), h("th", {}, t("Khu vực")), h("th", {}, t("Kết quả")))), h("tbody", {}, r.plays.slice(-300).reverse().map((p) => h("tr", {}, h("td", {}, fmtTime(p.started_at || p.scheduled_at)), h("td", {}, p.title || p.programme_id), h("td", {}, p.receiver_name || p.receiver_id), h("td", {}, p.zone_name || ""), h("td", {}, h("span", { class: `badge ${p.outcome}` }, t((OUTCOMES.find(([k]) => k === p.outcome) || [p.outcome, p.outcome])[1]))))))))
          : empty(t("Chưa có lần phát nào trong tuần này.")),
      ),
    );
  };
  week.addEventListener("change", () => attempt(load));
  unit.addEventListener("change", () => attempt(load));
  const csv = h("button", { id: "plays-csv", onclick: () => attempt(async () => download(await blob(`/reports/plays?${query()}&format=csv`), `loa-bao-cao-phat-${week.value}.csv`)) }, `⬇ ${t("Tải CSV")}`);
  await load();
  mount(box, card(null, h("div", { class: "row" }, h("label", {}, t("Tuần"), week), h("label", {}, t("Đơn vị"), unit), csv)), out);
}

function bulletinChart(r) {
  const W = 640, H = 240, left = 30, bottom = 34, top = 12;
  const communes = r.communes.slice(0, 12);
  const max = Math.max(r.target + 1, ...communes.flatMap((c) => c.counts));
  const y = (v) => H - bottom - ((H - bottom - top) * v) / max;
  const gw = (W - left - 8) / r.weeks.length;
  const bw = Math.max(2, (gw * 0.8) / Math.max(1, communes.length));
  const svg = h("svg", { class: "chart", id: "bulletin-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("Bản tin chuyển đổi số") });
  svg.append(h("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  for (const v of [0, r.target, max]) svg.append(h("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  r.weeks.forEach((w, i) => {
    const gx = left + i * gw + gw * 0.1;
    communes.forEach((c, j) => {
      const v = c.counts[i];
      svg.append(h("rect", { class: c.met[i] ? "bar-met" : "bar-unmet", x: gx + j * bw, y: y(v), width: Math.max(1, bw - 1), height: Math.max(v ? 0 : 2, H - bottom - y(v)) }, h("title", {}, `${c.name} · ${w.week}: ${v}`)));
    });
    svg.append(h("text", { x: gx + (bw * communes.length) / 2, y: H - 14, "text-anchor": "middle" }, w.week.slice(5)));
  });
  svg.append(h("line", { class: "target", x1: left, y1: y(r.target), x2: W, y2: y(r.target) }));
  svg.append(h("text", { x: W - 4, y: y(r.target) - 4, "text-anchor": "end" }, `${t("Chỉ tiêu")}: ${r.target}/${t("tuần")}`));
  return svg;
}

async function bulletinsTab(box, units) {
  const weeks = h("select", { id: "bulletin-weeks" }, [4, 8, 12, 26].map((n) => h("option", { value: n, selected: n === 8 }, `${n} ${t("tuần")}`)));
  const unit = unitSelect(units, "bulletin-unit");
  const out = h("div", { id: "bulletin-report" });
  const query = () => `weeks=${weeks.value}&unit=${encodeURIComponent(unit.value)}`;
  const load = async () => {
    const r = await get(`/reports/bulletins?${query()}`);
    const last = r.weeks.length - 1;
    const metNow = r.communes.filter((c) => c.met[last]).length;
    mount(
      out,
      h(
        "div",
        { class: "stats" },
        h("div", { class: "stat" }, h("b", {}, r.communes.length), t("Xã")),
        h("div", { class: "stat ok" }, h("b", { id: "bulletin-met" }, metNow), `${t("Đạt")} (${t("tuần này")})`),
        h("div", { class: `stat ${r.communes.length - metNow ? "bad" : ""}` }, h("b", {}, r.communes.length - metNow), `${t("Chưa đạt")} (${t("tuần này")})`),
        h("div", { class: "stat" }, h("b", {}, `≥${r.target}`), `${t("Chỉ tiêu")} / ${t("tuần")}`),
      ),
      card(t("Bản tin chuyển đổi số"), bulletinChart(r), h("div", { class: "legend" }, h("span", {}, h("i", { class: "l-online" }), t("Đạt")), h("span", {}, h("i", { class: "l-bad" }), t("Chưa đạt")))),
      card(
        null,
        r.communes.length
          ? h("div", { class: "table-wrap" }, h("table", { id: "bulletin-table" }, h("thead", {}, h("tr", {}, h("th", {}, t("Xã")), r.weeks.map((w) => h("th", { class: "num" }, w.week.slice(5))))), h("tbody", {}, r.communes.map((c) => h("tr", {}, h("td", {}, c.name), c.counts.map((n, i) => h("td", { class: `num ${c.met[i] ? "yes" : "no"}` }, `${n} ${c.met[i] ? "✓" : "✗"}`)))))))
          : empty(t("Chưa có xã nào.")),
      ),
    );
  };
  weeks.addEventListener("change", () => attempt(load));
  unit.addEventListener("change", () => attempt(load));
  const csv = h("button", { id: "bulletin-csv", onclick: () => attempt(async () => download(await blob(`/reports/bulletins?${query()}&format=csv`), "loa-ban-tin-chuyen-doi-so.csv")) }, `⬇ ${t("Tải CSV")}`);
  await load();
  mount(box, card(null, h("div", { class: "row" }, h("label", {}, t("Số tuần"), weeks), h("label", {}, t("Đơn vị"), unit), csv)), out);
}

export async function render(root, ctx) {
  const units = await get("/units");
  const box = h("div");
  let tab = ctx.params.get("tab") === "chuyen-doi-so" ? 1 : 0;
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const show = async () => {
    mount(
      tabs,
      [t("Bằng chứng phát"), t("Bản tin chuyển đổi số")].map((label, i) =>
        h("button", { role: "tab", class: i === tab ? "active" : "", id: `tab-${i}`, "aria-selected": i === tab ? "true" : "false", onclick: () => { tab = i; attempt(show); } }, label),
      ),
    );
    if (tab === 0) await playsTab(box, units);
    else await bulletinsTab(box, units);
  };
  await show();
  mount(root, tabs, box);
}

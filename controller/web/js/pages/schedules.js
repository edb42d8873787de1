// Lịch phát: the week calendar (Monday to Sunday, Vietnam time), the form
// for a new schedule (once, daily, or weekly on chosen days, at a local
// time, in chosen zones) with a live preview of its next plays, conflicts
// with other schedules and quiet hours — before saving — and the list of
// schedules with their approval state.

import { get, post, del } from "../api.js";
import { t } from "../i18n.js";
import {
  h, mount, card, empty, toast, attempt, dialog, fmtTime, fmtClock, statusBadge, zonePicker, checkedValues,
  localParts, localMidnight, PRIORITIES,
} from "../ui.js";

const DAYS = [
  ["MO", "T2", "Thứ Hai"],
  ["TU", "T3", "Thứ Ba"],
  ["WE", "T4", "Thứ Tư"],
  ["TH", "T5", "Thứ Năm"],
  ["FR", "T6", "Thứ Sáu"],
  ["SA", "T7", "Thứ Bảy"],
  ["SU", "CN", "Chủ Nhật"],
];

/** "Hằng tuần: T3, T6 lúc 06:30" from a schedule. */
export function describe(s) {
  const time = s.start.slice(11, 16);
  const rule = s.rrule || "";
  if (!rule) return `${t("Một lần")}: ${s.start.slice(8, 10)}/${s.start.slice(5, 7)}/${s.start.slice(0, 4)} ${time}`;
  const parts = Object.fromEntries(rule.split(";").map((p) => p.split("=")));
  const count = parts.COUNT ? ` (${parts.COUNT} ${t("lần")})` : "";
  if (parts.FREQ === "DAILY") return `${t("Hằng ngày")} ${time}${count}`;
  if (parts.FREQ === "WEEKLY") {
    const days = (parts.BYDAY || "").split(",").map((d) => (DAYS.find(([k]) => k === d) || [d, d])[1]);
    return `${t("Hằng tuần")}: ${days.join(", ")} ${time}${count}`;
  }
  return `${rule} ${time}`;
}

function addDays(date, n) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

function mondayOf(date) {
  const wd = new Date(`${date}T00:00:00Z`).getUTCDay(); // 0 = Sunday
  return addDays(date, -((wd + 6) % 7));
}

async function calendarCard(state) {
  const today = localParts(new Date()).date;
  const monday = addDays(mondayOf(today), 7 * state.week);
  const from = localMidnight(monday);
  const to = localMidnight(addDays(monday, 7));
  const entries = await get(`/calendar?from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`);
  const days = DAYS.map(([, short, long], i) => {
    const date = addDays(monday, i);
    const items = entries.filter((e) => localParts(new Date(e.at)).date === date);
    return h(
      "div",
      { class: `day ${date === today ? "today" : ""}`, "data-date": date },
      h("h3", {}, `${t(long)} ${date.slice(8, 10)}/${date.slice(5, 7)}`),
      items.map((e) =>
        h("span", { class: `event status-${e.status} ${e.priority}`, title: `${e.title} — ${t(e.status)}` }, h("b", {}, fmtClock(e.at)), " ", e.title),
      ),
    );
  });
  const box = h("div");
  const nav = h(
    "div",
    { class: "week-nav" },
    h("button", { class: "small", onclick: () => { state.week -= 1; state.redrawCalendar(); } }, `‹ ${t("Tuần trước")}`),
    h("button", { class: "small", onclick: () => { state.week = 0; state.redrawCalendar(); } }, t("Tuần này")),
    h("button", { class: "small", onclick: () => { state.week += 1; state.redrawCalendar(); } }, `${t("Tuần sau")} ›`),
    h("b", {}, `${monday.slice(8, 10)}/${monday.slice(5, 7)} – ${addDays(monday, 6).slice(8, 10)}/${addDays(monday, 6).slice(5, 7)}/${monday.slice(0, 4)}`),
  );
  mount(box, nav, h("div", { class: "calendar", id: "calendar" }, days));
  return box;
}

function scheduleForm(ctx, data, reload) {
  const approves = ctx.me.permissions.approve;
  const now = localParts(new Date());
  const choosable = data.programmes.filter((p) => p.status !== "rejected");
  const wanted = ctx.params.get("programme");
  const programme = h(
    "select",
    { id: "sch-programme", name: "programme" },
    choosable.map((p) => h("option", { value: p.id, selected: p.id === wanted }, `${p.title}${p.status === "approved" ? "" : ` (${t(p.status === "pending" ? "Chờ duyệt" : "Bản nháp")})`}`)),
  );
  const repeat = h(
    "div",
    { class: "chips", role: "radiogroup" },
    [["once", "Một lần"], ["daily", "Hằng ngày"], ["weekly", "Hằng tuần"]].map(([v, l]) =>
      h("label", { class: "chip" }, h("input", { type: "radio", name: "sch-repeat", value: v, checked: v === "weekly" }), t(l)),
    ),
  );
  const days = h(
    "fieldset",
    { id: "sch-days" },
    h("legend", {}, t("Các ngày trong tuần")),
    h("div", { class: "chips" }, DAYS.map(([k, short, long]) => h("label", { class: "chip", title: t(long) }, h("input", { type: "checkbox", name: "sch-day", value: k }), short))),
  );
  const date = h("input", { type: "date", id: "sch-date", value: now.date });
  const time = h("input", { type: "time", id: "sch-time", step: 1, value: "06:30" });
  const count = h("input", { type: "number", id: "sch-count", min: 1, max: 1000, placeholder: "∞" });
  const priority = h("select", { id: "sch-priority" }, PRIORITIES.map(([k, v]) => h("option", { value: k }, t(v))));
  const zones = zonePicker(data.zones, "sch-zone");
  const preview = h("div", { id: "sch-preview", "aria-live": "polite" });
  const error = h("p", { class: "form-error", role: "alert" });
  const save = h("button", { class: "primary", id: "sch-save", type: "button" }, approves ? t("Lưu") : t("Lưu và gửi duyệt"));
  const form = h(
    "div",
    { class: "form-grid", id: "schedule-form" },
    h("label", { class: "wide" }, t("Chương trình"), programme),
    h("div", { class: "wide" }, repeat),
    h("div", { class: "wide" }, days),
    h("label", {}, t("Ngày bắt đầu"), date),
    h("label", {}, t("Giờ phát"), time),
    h("label", {}, t("Mức ưu tiên"), priority),
    h("label", {}, t("Số lần phát (để trống: không giới hạn)"), count),
    h("fieldset", { class: "wide" }, h("legend", {}, t("Nơi phát")), zones),
  );

  const body = () => {
    const mode = form.querySelector('input[name="sch-repeat"]:checked').value;
    let tm = time.value || "06:30";
    if (tm.length === 5) tm += ":00";
    let rrule = null;
    if (mode === "daily") rrule = "FREQ=DAILY";
    if (mode === "weekly") {
      const chosen = checkedValues(form, "sch-day");
      if (!chosen.length) throw new Error(t("Hãy chọn ít nhất một ngày trong tuần."));
      rrule = `FREQ=WEEKLY;BYDAY=${chosen.join(",")}`;
    }
    if (rrule && count.value) rrule += `;COUNT=${parseInt(count.value, 10)}`;
    const targets = { zones: checkedValues(form, "sch-zone"), receivers: [] };
    if (!targets.zones.length) throw new Error(t("Hãy chọn ít nhất một khu vực."));
    if (!programme.value) throw new Error(t("Hãy tải lên một chương trình trước."));
    return { programme_id: programme.value, targets, start: `${date.value}T${tm}`, timezone: "Asia/Ho_Chi_Minh", rrule, priority: priority.value };
  };

  let timer = null;
  let seq = 0;
  const refreshPreview = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      days.hidden = form.querySelector('input[name="sch-repeat"]:checked').value !== "weekly";
      let b;
      try {
        b = body();
      } catch (e) {
        mount(preview, h("p", { class: "empty" }, e.message));
        return;
      }
      try {
        const p = await post("/schedules/preview", b);
        if (mine !== seq) return;
        const problems = p.conflicts.length + p.quiet_hours.length;
        mount(
          preview,
          h(
            "div",
            { class: `preview ${problems ? "has-conflicts" : ""}`, id: "preview-result", "data-conflicts": p.conflicts.length, "data-quiet": p.quiet_hours.length },
            h("b", {}, problems ? `⚠ ${t("Trùng lịch")}: ${p.conflicts.length} · ${t("Giờ yên lặng")}: ${p.quiet_hours.length}` : `✓ ${t("Không trùng lịch.")}`),
            h("ul", {}, p.conflicts.slice(0, 5).map((c) => h("li", {}, `${fmtTime(c.at)} — "${c.title}" ${fmtClock(c.other_at)} (${t(c.effect === "preempts" ? "bản tin này ngắt bản tin kia" : c.effect === "preempted" ? "bị bản tin kia ngắt" : "phát nối tiếp, chờ bản tin kia xong")})`))),
            h("ul", {}, p.quiet_hours.slice(0, 3).map((q) => h("li", {}, `${fmtTime(q.at)} — ${t("Giờ yên lặng")} ${q.quiet_hours} (${q.zone_name})`))),
            h("small", {}, `${t("Các lần phát tới")}: ${p.occurrences.slice(0, 4).map((o) => fmtTime(o)).join(" · ") || "—"} · ${p.receivers.length} ${t("loa")}`),
          ),
        );
      } catch (e) {
        if (mine === seq) mount(preview, h("p", { class: "form-error" }, e.message));
      }
    }, 250);
  };
  form.addEventListener("input", refreshPreview);
  form.addEventListener("change", refreshPreview);
  refreshPreview();

  save.addEventListener("click", async () => {
    error.textContent = "";
    let b;
    try {
      b = body();
    } catch (e) {
      error.textContent = e.message;
      return;
    }
    save.disabled = true;
    try {
      const s = await post("/schedules", { ...b, submit: true });
      toast(s.status === "approved" ? t("Đã lưu lịch phát.") : t("Đã lưu và gửi duyệt lịch phát."));
      await reload();
    } catch (e) {
      error.textContent = e.message;
    } finally {
      save.disabled = false;
    }
  });
  return card(t("Thêm lịch phát"), choosable.length ? [form, preview, error, h("div", { class: "row" }, save)] : empty(t("Hãy tải lên một chương trình trước.")));
}

function listCard(ctx, data, reload) {
  const perms = ctx.me.permissions;
  const titles = new Map(data.programmes.map((p) => [p.id, p.title]));
  const zoneName = new Map(data.zones.map((z) => [z.id, z.name]));
  const act = (label, cls, f, id) => h("button", { class: `small ${cls}`, onclick: f, id }, label);
  const items = data.schedules
    .slice()
    .reverse()
    .map((s) => {
      const actions = [];
      const call = (verb, msg) => () => attempt(async () => { await post(`/schedules/${encodeURIComponent(s.id)}/${verb}`); toast(t(msg)); await reload(); });
      if (perms.edit && (s.status === "draft" || s.status === "rejected")) actions.push(act(t("Gửi duyệt"), "", call("submit", "Đã gửi duyệt."), `sch-submit-${s.id}`));
      if (perms.approve && s.status !== "approved") actions.push(act(t("Duyệt"), "ok", call("approve", "Đã duyệt."), `sch-approve-${s.id}`));
      if (perms.approve && s.status !== "rejected") {
        actions.push(
          act(t("Từ chối"), "", async () => {
            const note = h("textarea", { rows: 3 });
            const ok = await dialog(t("Từ chối"), h("label", {}, t("Lý do từ chối (không bắt buộc)"), note), [
              { label: t("Huỷ"), value: null },
              { label: t("Từ chối"), value: "yes", class: "danger" },
            ]);
            if (ok) await attempt(async () => { await post(`/schedules/${encodeURIComponent(s.id)}/reject`, { note: note.value }); await reload(); });
          }, `sch-reject-${s.id}`),
        );
      }
      if (perms.edit && (s.status !== "approved" || perms.approve)) {
        actions.push(act(t("Xoá"), "", async () => {
          const ok = await dialog(t("Xoá"), t("Xoá lịch phát này?"), [{ label: t("Huỷ"), value: null }, { label: t("Xoá"), value: "yes", class: "danger" }]);
          if (ok) await attempt(async () => { await del(`/schedules/${encodeURIComponent(s.id)}`); await reload(); });
        }, `sch-delete-${s.id}`));
      }
      const where = [...s.targets.zones.map((z) => zoneName.get(z) || z), ...s.targets.receivers].join(", ");
      return h(
        "li",
        { id: `sch-${s.id}`, "data-status": s.status },
        h("div", { class: "main" }, h("b", {}, s.programme_id ? titles.get(s.programme_id) || s.programme_id : `${t("Tiếp sóng")}: ${s.source?.url || ""}`), h("small", {}, `${describe(s)} · ${where}`), h("br"), h("small", {}, `${t("Lần tới")}: ${s.next_occurrences[0] ? fmtTime(s.next_occurrences[0]) : "—"}${s.review_note ? ` · ${t("Ghi chú")}: ${s.review_note}` : ""}`)),
        s.priority !== "normal" ? h("span", { class: `badge ${s.priority}` }, t(PRIORITIES.find(([k]) => k === s.priority)?.[1] || s.priority)) : null,
        statusBadge(s.status),
        h("div", { class: "actions" }, actions),
      );
    });
  return card(t("Danh sách lịch phát"), items.length ? h("ul", { class: "list", id: "schedule-list" }, items) : empty(t("Chưa có lịch phát nào.")));
}

export async function render(root, ctx) {
  const state = { week: 0 };
  const calendarBox = h("div", { id: "calendar-box" });
  const listBox = h("div");
  let data;
  const load = async () => {
    const [programmes, zones, schedules] = await Promise.all([get("/programmes"), get("/zones"), get("/schedules")]);
    data = { programmes, zones, schedules };
  };
  state.redrawCalendar = async () => mount(calendarBox, card(t("Lịch phát"), await calendarCard(state)));
  const reload = async () => {
    await load();
    mount(listBox, listCard(ctx, data, reload));
    await state.redrawCalendar();
  };
  await load();
  await state.redrawCalendar();
  mount(listBox, listCard(ctx, data, reload));
  mount(root, ctx.me.permissions.edit ? scheduleForm(ctx, data, reload) : null, calendarBox, listBox);
}

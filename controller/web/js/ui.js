// Small DOM helpers shared by the pages: an element builder, messages,
// dialogs, and formatting in Vietnam time.

import { t, lang } from "./i18n.js";

export const TZ = "Asia/Ho_Chi_Minh";

/**
 * Builds an element: h("button", {class: "x", onclick: f}, "text", child).
 * Attributes starting with "on" become listeners; `false`/null ones are skipped.
 */
export function h(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "circle", "line", "text", "path", "polyline", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" && !svg) el.value = v;
    else if (k === "checked" && !svg) el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A short message at the bottom of the screen. */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** Runs `f`, showing its error (an ApiError's Vietnamese message) if it fails. */
export async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    toast(e.message || t("Có lỗi xảy ra."), "error");
    return undefined;
  }
}

/**
 * A modal dialog with `content` and buttons; resolves with the clicked
 * button's value (null when dismissed).
 */
export function dialog(title, content, buttons) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "dialog" });
    const close = (value) => {
      dlg.close();
      dlg.remove();
      resolve(value);
    };
    dlg.append(
      h("h2", {}, title),
      h("div", { class: "dialog-body" }, content),
      h(
        "div",
        { class: "dialog-buttons" },
        buttons.map((b) =>
          h("button", { class: b.class || "", "data-value": b.value, onclick: () => close(b.value) }, b.label),
        ),
      ),
    );
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      close(null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

const locale = () => (lang() === "en" ? "en-GB" : "vi-VN");

/** "06:30 thứ Ba 24/11/2026" in Vietnam time. */
export function fmtTime(iso, opts) {
  if (!iso) return "—";
  return new Intl.DateTimeFormat(locale(), {
    timeZone: TZ,
    hour: "2-digit",
    minute: "2-digit",
    weekday: "short",
    day: "2-digit",
    month: "2-digit",
    year: "numeric",
    ...(opts || {}),
  }).format(new Date(iso));
}

export function fmtClock(iso) {
  return new Intl.DateTimeFormat(locale(), { timeZone: TZ, hour: "2-digit", minute: "2-digit" }).format(new Date(iso));
}

/** "3:05" or "1:02:03". */
export function fmtDuration(ms) {
  const s = Math.round((ms || 0) / 1000);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** The local (Vietnam) date and time parts of an instant. */
export function localParts(date) {
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone: TZ,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
    weekday: "short",
  }).formatToParts(date);
  const get = (type) => parts.find((p) => p.type === type).value;
  return {
    date: `${get("year")}-${get("month")}-${get("day")}`,
    time: `${get("hour")}:${get("minute")}:${get("second")}`,
    weekday: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].indexOf(get("weekday")),
  };
}

/** The instant of local (Vietnam, UTC+7, no DST) midnight of `yyyy-mm-dd`. */
export function localMidnight(date) {
  return new Date(`${date}T00:00:00+07:00`);
}

export const STATUS = {
  draft: "Bản nháp",
  pending: "Chờ duyệt",
  approved: "Đã duyệt",
  rejected: "Bị từ chối",
};

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, t(STATUS[status] || status));
}

export const CATEGORIES = [
  ["chuyen-doi-so", "Chuyển đổi số"],
  ["thoi-su", "Thời sự"],
  ["thong-bao", "Thông báo"],
  ["phap-luat", "Pháp luật"],
  ["nong-nghiep", "Nông nghiệp"],
  ["y-te", "Y tế"],
  ["van-hoa", "Văn hoá"],
  ["khac", "Khác"],
];

export function categoryLabel(c) {
  const found = CATEGORIES.find(([k]) => k === c);
  return found ? found[1] : c;
}

/** Lower-case without diacritics, words joined by "-": "Chuyển đổi số" → "chuyen-doi-so". */
export function fold(text) {
  return text
    .normalize("NFD")
    .replace(/[\u0300-\u036f]/g, "")
    .replace(/đ/g, "d")
    .replace(/Đ/g, "D")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "");
}

/** Offers a Blob as a file download. */
export function download(data, name) {
  const url = URL.createObjectURL(data);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export const PRIORITIES = [
  ["normal", "Thường"],
  ["priority", "Quan trọng"],
  ["emergency", "Khẩn cấp"],
];

/** Checkboxes for choosing zones; all checked unless `checked` says otherwise. */
export function zonePicker(zones, name, checked) {
  return h(
    "div",
    { class: "chips", role: "group" },
    zones.map((z) =>
      h(
        "label",
        { class: "chip" },
        h("input", { type: "checkbox", name, value: z.id, checked: checked ? checked.includes(z.id) : true }),
        z.name,
      ),
    ),
  );
}

export function checkedValues(root, name) {
  return [...root.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, children);
}

export function empty(text) {
  return h("p", { class: "empty" }, text);
}

// The console's shell: login, the top bar (unit, user, language, the
// emergency button), the navigation, and hash routing between pages
// (`#/lich-phat?programme=…`). Each page module exports
// `render(root, ctx)`, which may return a function that stops its timers.

import { get, post, setToken, token } from "./api.js";
import { lang, setLang, t } from "./i18n.js";
import { h, mount, attempt } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as programmes from "./pages/programmes.js";
import * as schedules from "./pages/schedules.js";
import * as receivers from "./pages/receivers.js";
import * as live from "./pages/live.js";
import * as reports from "./pages/reports.js";
import * as admin from "./pages/admin.js";

const PAGES = [
  { slug: "tong-quan", title: "Tổng quan", page: overview },
  { slug: "chuong-trinh", title: "Chương trình", page: programmes },
  { slug: "lich-phat", title: "Lịch phát", page: schedules },
  { slug: "cum-loa", title: "Cụm loa", page: receivers },
  { slug: "truc-tiep", title: "Phát trực tiếp", page: live },
  { slug: "bao-cao", title: "Báo cáo", page: reports },
  { slug: "quan-tri", title: "Quản trị", page: admin, shown: (p) => p.administer || p.approve },
];

const app = document.getElementById("app");
let me = null;
let stopPage = null;

function route() {
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "tong-quan").split("?");
  return { slug: path, params: new URLSearchParams(query || "") };
}

export function navigate(slug, params) {
  const q = params ? `?${new URLSearchParams(params)}` : "";
  location.hash = `#/${slug}${q}`;
}

function loginPage(message) {
  document.title = `Loa — ${t("Đăng nhập")}`;
  const error = h("p", { class: "form-error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "login card", id: "login-form" },
    h("div", { class: "login-brand" }, h("img", { src: "/assets/favicon.svg", alt: "", width: 48, height: 48 }), h("div", {}, h("h1", {}, "Loa"), h("p", {}, t("Hệ thống loa truyền thanh thông minh")))),
    h("label", {}, t("Tên đăng nhập"), h("input", { name: "username", autocomplete: "username", required: true, autofocus: true })),
    h("label", {}, t("Mật khẩu"), h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    error,
    h("button", { class: "primary", type: "submit" }, t("Đăng nhập")),
    langToggle(),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const data = new FormData(form);
    try {
      const r = await post("/login", { username: data.get("username"), password: data.get("password") });
      setToken(r.token);
      await start();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  mount(app, h("main", { class: "login-page" }, form));
}

function langToggle() {
  return h(
    "button",
    {
      type: "button",
      class: "lang",
      title: "Tiếng Việt / English",
      onclick: () => {
        setLang(lang() === "vi" ? "en" : "vi");
        if (me) shell();
        else loginPage();
      },
    },
    lang() === "vi" ? "EN" : "VI",
  );
}

function shell() {
  const p = me.permissions;
  const pages = PAGES.filter((pg) => !pg.shown || pg.shown(p));
  const nav = h(
    "nav",
    { class: "nav", "aria-label": "Menu" },
    pages.map((pg) => h("a", { href: `#/${pg.slug}`, "data-slug": pg.slug }, t(pg.title))),
  );
  const top = h(
    "header",
    { class: "topbar" },
    h("a", { class: "brand", href: "#/tong-quan" }, h("img", { src: "/assets/favicon.svg", alt: "", width: 28, height: 28 }), "Loa"),
    h("span", { class: "unit-name", title: t("Đơn vị") }, me.unit.name),
    h("span", { class: "spacer" }),
    p.broadcast
      ? h("button", { class: "danger emergency-top", id: "emergency-top", onclick: () => navigate("truc-tiep", { "khan-cap": "1" }) }, "⚠ ", t("Khẩn cấp"))
      : null,
    langToggle(),
    h("span", { class: "who" }, h("b", {}, me.display_name || me.username), h("small", {}, t(me.role_vi))),
    h(
      "button",
      {
        class: "ghost",
        id: "logout",
        onclick: async () => {
          await attempt(() => post("/logout"));
          setToken(null);
          me = null;
          loginPage();
        },
      },
      t("Đăng xuất"),
    ),
  );
  mount(app, top, nav, h("main", { id: "page" }));
  render();
}

async function render() {
  if (!me) return;
  if (stopPage) {
    stopPage();
    stopPage = null;
  }
  const { slug, params } = route();
  const entry = PAGES.find((pg) => pg.slug === slug && (!pg.shown || pg.shown(me.permissions))) || PAGES[0];
  for (const a of document.querySelectorAll(".nav a")) {
    a.classList.toggle("active", a.dataset.slug === entry.slug);
    if (a.dataset.slug === entry.slug) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${t(entry.title)} — Loa`;
  const root = document.getElementById("page");
  mount(root, h("h1", { class: "page-title" }, t(entry.title)), h("p", { class: "loading" }, t("Đang tải…")));
  const body = h("div", { class: "page-body" });
  try {
    const stop = await entry.page.render(body, { me, params, navigate, rerender: render });
    mount(root, h("h1", { class: "page-title" }, t(entry.title)), body);
    if (typeof stop === "function") stopPage = stop;
  } catch (e) {
    mount(root, h("h1", { class: "page-title" }, t(entry.title)), h("p", { class: "form-error" }, e.message || t("Có lỗi xảy ra.")));
  }
}

async function start() {
  if (!token()) return loginPage();
  try {
    me = await get("/me");
  } catch (e) {
    me = null;
    return loginPage(e.status === 401 ? "" : e.message);
  }
  shell();
}

window.addEventListener("hashchange", render);
window.addEventListener("loa:logout", () => {
  // Already on the login page (someone is typing): keep the form as it is.
  if (!me && document.querySelector("#login-form")) return;
  me = null;
  if (stopPage) stopPage();
  stopPage = null;
  loginPage(t("Phiên đăng nhập đã hết hạn. Vui lòng đăng nhập lại."));
});
document.documentElement.lang = lang();
start();

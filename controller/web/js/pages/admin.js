// Quản trị: units (province → district → commune), users (role, unit,
// lock, password reset) for admins, and the audit log (who did what,
// when) for admins and approvers, with CSV export.

import { get, post, patch, blob } from "../api.js";
import { t } from "../i18n.js";
import { h, mount, card, empty, toast, attempt, dialog, download, fmtTime } from "../ui.js";

const ROLES = [
  ["admin", "Quản trị"],
  ["approver", "Người duyệt"],
  ["editor", "Biên tập viên"],
  ["technician", "Kỹ thuật viên"],
  ["viewer", "Người xem"],
];
const KINDS = [
  ["province", "Tỉnh"],
  ["district", "Huyện"],
  ["commune", "Xã"],
];
const KIND_LABEL = { root: "Toàn hệ thống", province: "Tỉnh", district: "Huyện", commune: "Xã" };
const DEPTH = { root: 0, province: 1, district: 2, commune: 3 };

function unitsCard(units, reload) {
  const inScope = units.filter((u) => u.in_scope);
  const byParent = new Map();
  for (const u of inScope) byParent.set(u.parent_id, [...(byParent.get(u.parent_id) || []), u]);
  const rows = [];
  const walk = (u, depth) => {
    rows.push(h("li", { id: `unit-${u.id}` }, h("div", { class: "main" }, h("b", {}, `${"— ".repeat(depth)}${u.name}`), h("small", {}, `${t(KIND_LABEL[u.kind] || u.kind)} · ${u.id} · ${u.zones} ${t("khu vực")} · ${u.users} ${t("người dùng")}`))));
    for (const c of byParent.get(u.id) || []) walk(c, depth + 1);
  };
  const roots = inScope.filter((u) => !inScope.some((p) => p.id === u.parent_id));
  roots.forEach((u) => walk(u, 0));
  const id = h("input", { placeholder: "xa-tan-lap", id: "unit-id" });
  const name = h("input", { placeholder: "Xã Tân Lập", id: "unit-name" });
  const kind = h("select", { id: "unit-kind" }, KINDS.map(([k, l]) => h("option", { value: k }, t(l))));
  const parent = h("select", { id: "unit-parent" }, inScope.filter((u) => u.kind !== "commune").map((u) => h("option", { value: u.id }, `${"· ".repeat(DEPTH[u.kind] || 0)}${u.name}`)));
  const add = h("button", { class: "primary", onclick: () => attempt(async () => { await post("/units", { id: id.value.trim(), name: name.value, kind: kind.value, parent_id: parent.value }); toast(t("Đã thêm đơn vị.")); await reload(); }) }, t("Thêm đơn vị"));
  return card(t("Đơn vị"), h("ul", { class: "list" }, rows), h("h3", {}, t("Thêm đơn vị")), h("div", { class: "form-grid" }, h("label", {}, t("Mã"), id), h("label", {}, t("Tên"), name), h("label", {}, t("Cấp"), kind), h("label", {}, t("Thuộc"), parent)), h("div", { class: "row" }, add));
}

function usersCard(me, users, units, reload) {
  const unitName = new Map(units.map((u) => [u.id, u.name]));
  const roleLabel = (r) => t((ROLES.find(([k]) => k === r) || [r, r])[1]);
  const items = users.map((u) =>
    h(
      "li",
      { id: `user-${u.username}` },
      h("div", { class: "main" }, h("b", {}, u.display_name || u.username), h("small", {}, `${u.username} · ${roleLabel(u.role)} · ${unitName.get(u.unit_id) || u.unit_id}`)),
      u.disabled ? h("span", { class: "badge offline" }, t("Đã khoá")) : null,
      u.id === me.id
        ? null
        : h(
            "div",
            { class: "actions" },
            h("button", { class: "small", onclick: () => attempt(async () => { await patch(`/users/${u.id}`, { disabled: !u.disabled }); await reload(); }) }, u.disabled ? t("Mở khoá") : t("Khoá")),
            h("button", {
              class: "small",
              onclick: async () => {
                const role = h("select", {}, ROLES.map(([k, l]) => h("option", { value: k, selected: k === u.role }, t(l))));
                const unit = h("select", {}, units.filter((x) => x.in_scope).map((x) => h("option", { value: x.id, selected: x.id === u.unit_id }, x.name)));
                const password = h("input", { type: "password", autocomplete: "new-password", placeholder: t("để trống nếu không đổi") });
                const ok = await dialog(u.username, h("div", { class: "form-grid" }, h("label", {}, t("Vai trò"), role), h("label", {}, t("Đơn vị"), unit), h("label", { class: "wide" }, t("Đặt lại mật khẩu"), password)), [{ label: t("Huỷ"), value: null }, { label: t("Lưu"), value: "yes", class: "primary" }]);
                if (ok) await attempt(async () => { await patch(`/users/${u.id}`, { role: role.value, unit_id: unit.value, ...(password.value ? { password: password.value } : {}) }); toast(t("Đã lưu.")); await reload(); });
              },
            }, t("Sửa")),
          ),
    ),
  );
  const username = h("input", { id: "new-username", autocomplete: "off" });
  const fullName = h("input", { id: "new-fullname" });
  const password = h("input", { id: "new-password", type: "password", autocomplete: "new-password" });
  const role = h("select", { id: "new-role" }, ROLES.map(([k, l]) => h("option", { value: k, selected: k === "editor" }, t(l))));
  const unit = h("select", { id: "new-unit" }, units.filter((x) => x.in_scope).map((x) => h("option", { value: x.id }, `${"· ".repeat(DEPTH[x.kind] || 0)}${x.name}`)));
  const add = h("button", { class: "primary", id: "new-user", onclick: () => attempt(async () => { await post("/users", { username: username.value, display_name: fullName.value, password: password.value, role: role.value, unit_id: unit.value }); toast(t("Đã thêm người dùng.")); await reload(); }) }, t("Thêm người dùng"));
  return card(t("Người dùng"), h("ul", { class: "list" }, items), h("h3", {}, t("Thêm người dùng")), h("div", { class: "form-grid" }, h("label", {}, t("Tên đăng nhập"), username), h("label", {}, t("Họ tên"), fullName), h("label", {}, t("Mật khẩu"), password), h("label", {}, t("Vai trò"), role), h("label", {}, t("Đơn vị"), unit)), h("div", { class: "row" }, add));
}

function auditCard(entries) {
  return card(
    t("Nhật ký thao tác"),
    h("div", { class: "row" }, h("button", { id: "audit-csv", onclick: () => attempt(async () => download(await blob("/audit?format=csv&limit=1000"), "loa-nhat-ky.csv")) }, `⬇ ${t("Tải CSV")}`)),
    entries.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "audit-table" }, h("thead", {}, h("tr", {}, h("th", {}, t("Thời điểm")), h("th", {}, t("Người thực hiện")), h("th", {}, t("Thao tác")), h("th", {}, t("Đối tượng")), h("th", {}, t("Kết quả")))), h("tbody", {}, entries.map((e) => h("tr", {}, h("td", {}, fmtTime(e.at, { second: "2-digit" })), h("td", {}, e.username || "—"), h("td", {}, e.action), h("td", {}, e.object_id || ""), h("td", {}, h("span", { class: `badge ${e.ok ? "completed" : "failed"}` }, e.status)))))))
      : empty(t("Chưa có thao tác nào.")),
  );
}

export async function render(root, ctx) {
  const perms = ctx.me.permissions;
  const reload = async () => {
    const [units, users, audit] = await Promise.all([get("/units"), perms.administer ? get("/users") : [], get("/audit?limit=200")]);
    mount(root, perms.administer ? h("div", { class: "grid two" }, usersCard(ctx.me, users, units, reload), unitsCard(units, reload)) : null, auditCard(audit));
  };
  await reload();
}

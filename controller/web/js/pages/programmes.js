// Chương trình: upload (drag and drop, progress bar from XMLHttpRequest's
// upload events), listen in the page, and the approval workflow (submit,
// approve, reject with a reason), then on to scheduling.

import { get, post, del, upload, blob } from "../api.js";
import { t } from "../i18n.js";
import {
  h, mount, card, empty, toast, attempt, dialog, fmtTime, fmtDuration, statusBadge,
  CATEGORIES, categoryLabel, fold,
} from "../ui.js";

const FILTERS = [
  ["", "Tất cả"],
  ["pending", "Chờ duyệt"],
  ["approved", "Đã duyệt"],
  ["draft", "Bản nháp"],
  ["rejected", "Bị từ chối"],
];

/** "ban_tin-chuyen_doi_so.mp3" → "ban tin chuyen doi so". */
function titleFromFile(name) {
  return name.replace(/\.[^.]+$/, "").replace(/[_-]+/g, " ").replace(/\s+/g, " ").trim();
}

function guessCategory(title) {
  const f = fold(title);
  const found = CATEGORIES.find(([k]) => f.includes(k));
  return found ? found[0] : "thong-bao";
}

function uploadCard(ctx, reload) {
  const approves = ctx.me.permissions.approve;
  let file = null;
  const input = h("input", { type: "file", id: "file-input", accept: "audio/*,.mp3,.wav,.flac,.ogg,.m4a,.aac", hidden: true });
  const chosen = h("span", { id: "file-name" });
  const zone = h(
    "div",
    { class: "dropzone", id: "dropzone", tabindex: 0, role: "button" },
    h("b", {}, t("Kéo thả tệp âm thanh vào đây, hoặc bấm để chọn tệp")),
    h("br"),
    h("small", {}, "MP3, WAV, FLAC, OGG, M4A"),
    h("br"),
    chosen,
  );
  const title = h("input", { id: "upload-title", name: "title", maxlength: 300, required: true });
  const category = h("select", { id: "upload-category", name: "category" }, CATEGORIES.map(([k, v]) => h("option", { value: k }, t(v))));
  const bar = h("progress", { id: "upload-bar", max: 100, value: 0 });
  const pct = h("span", { id: "upload-pct" }, "0%");
  const progress = h("div", { class: "progress", id: "upload-progress", hidden: true }, bar, pct);
  const error = h("p", { class: "form-error", role: "alert" });
  const submit = h("button", { class: "primary", id: "upload-submit", type: "button", disabled: true }, approves ? t("Tải lên") : t("Tải lên và gửi duyệt"));
  const draft = approves ? null : h("button", { id: "upload-draft", type: "button", disabled: true }, t("Lưu nháp"));

  const choose = (f) => {
    if (!f) return;
    file = f;
    chosen.textContent = `${f.name} (${(f.size / 1024 / 1024).toFixed(1).replace(".", ",")} MB)`;
    if (!title.value) title.value = titleFromFile(f.name);
    category.value = guessCategory(title.value);
    submit.disabled = false;
    if (draft) draft.disabled = false;
    error.textContent = "";
  };
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") input.click();
  });
  input.addEventListener("change", () => choose(input.files[0]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });

  const send = async (submitForApproval) => {
    if (!file) return;
    const form = new FormData();
    form.append("title", title.value);
    form.append("category", category.value);
    if (submitForApproval) form.append("submit", "true");
    form.append("file", file, file.name);
    submit.disabled = true;
    if (draft) draft.disabled = true;
    progress.hidden = false;
    bar.value = 0;
    pct.textContent = `${t("Đang tải lên")} 0%`;
    try {
      const p = await upload(
        "/programmes",
        form,
        (f) => {
          bar.value = Math.round(f * 100);
          pct.textContent = `${t("Đang tải lên")} ${Math.round(f * 100)}%`;
        },
        () => {
          bar.value = 100;
          pct.textContent = t("Đang chuyển mã…");
        },
      );
      toast(`${t("Đã tải lên.")} ${p.title} · ${fmtDuration(p.duration_ms)}`);
      file = null;
      title.value = "";
      chosen.textContent = "";
      input.value = "";
      progress.hidden = true;
      await reload();
    } catch (e) {
      error.textContent = e.message;
      submit.disabled = false;
      if (draft) draft.disabled = false;
      progress.hidden = true;
    }
  };
  submit.addEventListener("click", () => send(true));
  if (draft) draft.addEventListener("click", () => send(false));

  return card(
    t("Tải bản tin lên"),
    zone,
    input,
    h("div", { class: "form-grid" }, h("label", {}, t("Tiêu đề"), title), h("label", {}, t("Thể loại"), category)),
    progress,
    error,
    h("div", { class: "row" }, submit, draft),
  );
}

async function listen(p, slot) {
  await attempt(async () => {
    const data = await blob(`/programmes/${encodeURIComponent(p.id)}/audio`);
    const url = URL.createObjectURL(data);
    const audio = h("audio", { controls: true, src: url, id: `audio-${p.id}` });
    audio.addEventListener("emptied", () => URL.revokeObjectURL(url));
    mount(slot, audio);
    audio.play().catch(() => {});
  });
}

async function reject(kind, id, reload) {
  const note = h("textarea", { rows: 3, id: "reject-note" });
  const ok = await dialog(t("Từ chối"), h("label", {}, t("Lý do từ chối (không bắt buộc)"), note), [
    { label: t("Huỷ"), value: null },
    { label: t("Từ chối"), value: "yes", class: "danger" },
  ]);
  if (!ok) return;
  await attempt(async () => {
    await post(`/${kind}/${encodeURIComponent(id)}/reject`, { note: note.value });
    toast(t("Đã từ chối."));
    await reload();
  });
}

function row(p, ctx, reload) {
  const perms = ctx.me.permissions;
  const slot = h("div", { class: "player" });
  const act = (label, cls, f, id) => h("button", { class: `small ${cls}`, onclick: f, id }, label);
  const actions = [act(`▶ ${t("Nghe")}`, "", () => listen(p, slot), `listen-${p.id}`)];
  if (perms.edit && (p.status === "draft" || p.status === "rejected")) {
    actions.push(act(t("Gửi duyệt"), "", () => attempt(async () => { await post(`/programmes/${encodeURIComponent(p.id)}/submit`); toast(t("Đã gửi duyệt.")); await reload(); }), `submit-${p.id}`));
  }
  if (perms.approve && p.status !== "approved") {
    actions.push(act(t("Duyệt"), "ok", () => attempt(async () => { await post(`/programmes/${encodeURIComponent(p.id)}/approve`); toast(t("Đã duyệt.")); await reload(); }), `approve-${p.id}`));
  }
  if (perms.approve && p.status !== "rejected") {
    actions.push(act(t("Từ chối"), "", () => reject("programmes", p.id, reload), `reject-${p.id}`));
  }
  if (perms.edit && p.status !== "rejected") {
    actions.push(act(t("Đặt lịch"), "primary", () => ctx.navigate("lich-phat", { programme: p.id }), `schedule-${p.id}`));
  }
  if (perms.edit && (p.status !== "approved" || perms.approve)) {
    actions.push(
      act(t("Xoá"), "", async () => {
        const ok = await dialog(t("Xoá"), t("Xoá chương trình \"{title}\"?", { title: p.title }), [
          { label: t("Huỷ"), value: null },
          { label: t("Xoá"), value: "yes", class: "danger" },
        ]);
        if (ok) await attempt(async () => { await del(`/programmes/${encodeURIComponent(p.id)}`); await reload(); });
      }, `delete-${p.id}`),
    );
  }
  return h(
    "li",
    { id: `prog-${p.id}`, "data-status": p.status, "data-title": p.title },
    h(
      "div",
      { class: "main" },
      h("b", {}, p.title),
      h("small", {}, `${t(categoryLabel(p.category))} · ${fmtDuration(p.duration_ms)} · ${p.created_by || "—"} · ${fmtTime(p.created_at)}`),
      p.review_note ? h("small", { class: "note" }, h("br"), `${t("Ghi chú")}: ${p.review_note}`) : null,
      slot,
    ),
    statusBadge(p.status),
    h("div", { class: "actions" }, actions),
  );
}

export async function render(root, ctx) {
  let filter = ctx.params.get("status") || "";
  const listBox = h("div", { id: "programme-list" });
  const filters = h("div", { class: "row filters" });
  const reload = async () => {
    const all = await get("/programmes");
    mount(
      filters,
      FILTERS.map(([k, v]) =>
        h("button", { class: `small ${k === filter ? "active" : ""}`, onclick: () => { filter = k; reload(); } }, `${t(v)} (${k ? all.filter((p) => p.status === k).length : all.length})`),
      ),
    );
    const shown = all.filter((p) => !filter || p.status === filter);
    mount(listBox, shown.length ? h("ul", { class: "list" }, shown.map((p) => row(p, ctx, reload))) : empty(t("Chưa có chương trình nào.")));
  };
  await reload();
  mount(root, ctx.me.permissions.edit ? uploadCard(ctx, reload) : null, card(t("Chương trình"), filters, listBox));
}

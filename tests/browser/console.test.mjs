// Browser tests of the Loa console: Playwright (playwright-core) drives
// Debian's Chromium, headless, against a real controller and real
// receivers started by tests/tests/console_browser.rs, which passes
// everything in the JSON file named by LOA_CONSOLE_CONFIG and checks the
// receivers' recordings afterwards. Run with `node --test` (see
// scripts/browser-test.sh). The steps run in order and share state.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(fs.readFileSync(process.env.LOA_CONSOLE_CONFIG, "utf8"));
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const PAGES = ["tong-quan", "chuong-trinh", "lich-phat", "cum-loa", "truc-tiep", "bao-cao", "quan-tri"];
const DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
// How far ahead the bulletin is scheduled: time for the approval to reach
// the receivers and for them to fetch the audio.
const LEAD_SECONDS = 25;

let browser;
let desktop;
const state = {
  programmeId: null,
  scheduleId: null,
  bulletinSteps: [],
  uploadProgress: [],
  emergencyClicks: 0,
  emergencySeconds: [],
  emergencySpans: [],
  toneSpan: null,
  toneVolume: null,
  screenshots: [],
};

function log(...args) {
  console.log(new Date().toISOString().slice(11, 23), ...args);
}

/** Runs `f` on a new page of `context`; on failure, saves a screenshot. */
async function onPage(context, name, f) {
  const page = await context.newPage();
  page.on("pageerror", (e) => log("page error:", e.message));
  try {
    await f(page);
  } catch (e) {
    await shot(page, `failed-${name}`).catch(() => {});
    throw e;
  } finally {
    await page.close();
  }
}

async function shot(page, name) {
  const file = path.join(config.screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  state.screenshots.push(file);
}

/** Shows the login page, logging out whoever is logged in. */
async function loggedOut(page) {
  await page.goto(config.base + "/");
  await page.waitForSelector("#login-form, .nav");
  if (await page.locator("#logout").count()) {
    await page.click("#logout");
  }
  await page.waitForSelector("#login-form");
}

async function login(page, who) {
  await loggedOut(page);
  await page.fill('input[name="username"]', who.username);
  await page.fill('input[name="password"]', who.password);
  await page.click('#login-form button[type="submit"]');
  await page.waitForSelector(".nav");
}

async function open(page, slug) {
  const url = `${config.base}/#/${slug}`;
  // Going to the same URL with only a hash does not reload: reload then.
  if (page.url() === url) await page.reload();
  else await page.goto(url);
  await page.waitForSelector(".page-body");
}

/** One officer action (a click, a drop, a field filled), counted. */
async function action(label, f) {
  state.bulletinSteps.push(label);
  log(`action ${state.bulletinSteps.length}: ${label}`);
  await f();
}

/** Vietnam local date and time (UTC+7, no daylight saving) of `ms`. */
function vietnam(ms) {
  const d = new Date(ms + 7 * 3600 * 1000);
  const iso = d.toISOString();
  return { date: iso.slice(0, 10), time: iso.slice(11, 19), weekday: (d.getUTCDay() + 6) % 7 };
}

/** A receiver's WAV file: where the samples start, and how many there are. */
function wavInfo(file) {
  if (!fs.existsSync(file)) return { dataStart: 0, samples: 0 };
  const fd = fs.openSync(file, "r");
  try {
    const head = Buffer.alloc(4096);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    let pos = 12;
    while (pos + 8 <= n) {
      const id = head.toString("ascii", pos, pos + 4);
      const size = head.readUInt32LE(pos + 4);
      if (id === "data") {
        const size = fs.fstatSync(fd).size;
        return { dataStart: pos + 8, samples: Math.floor((size - pos - 8) / 4) };
      }
      pos += 8 + size + (size % 2);
    }
    return { dataStart: 0, samples: 0 };
  } finally {
    fs.closeSync(fd);
  }
}

/** Index of the first sample at or after `from` louder than `level`, or -1. */
function firstLoud(file, from, level) {
  const { dataStart, samples } = wavInfo(file);
  if (samples <= from) return -1;
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc((samples - from) * 4);
    fs.readSync(fd, buf, 0, buf.length, dataStart + from * 4);
    for (let i = 0; i < samples - from; i++) {
      if (Math.abs(buf.readFloatLE(i * 4)) > level) return from + i;
    }
    return -1;
  } finally {
    fs.closeSync(fd);
  }
}

before(async () => {
  browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${config.mic}`,
      "--autoplay-policy=no-user-gesture-required",
      "--lang=vi-VN",
    ],
  });
  desktop = await browser.newContext({ viewport: DESKTOP, locale: "vi-VN", timezoneId: "Asia/Ho_Chi_Minh" });
  await desktop.grantPermissions(["microphone"], { origin: config.base });
});

after(async () => {
  fs.writeFileSync(
    config.results,
    JSON.stringify(
      {
        programme_id: state.programmeId,
        schedule_id: state.scheduleId,
        bulletin_actions: state.bulletinSteps.length,
        bulletin_steps: state.bulletinSteps,
        upload_progress: state.uploadProgress,
        emergency_clicks: state.emergencyClicks,
        emergency_seconds: state.emergencySeconds,
        emergency_spans: state.emergencySpans,
        tone_span: state.toneSpan,
        tone_volume: state.toneVolume,
        screenshots: state.screenshots,
      },
      null,
      2,
    ),
  );
  await browser?.close();
});

test("the login page is in Vietnamese and refuses a wrong password", () =>
  onPage(desktop, "login", async (page) => {
  await page.goto(config.base + "/");
  await page.waitForSelector("#login-form");
  assert.equal(await page.getAttribute("html", "lang"), "vi");
  assert.match(await page.textContent("#login-form"), /Tên đăng nhập.*Mật khẩu.*Đăng nhập/s);
  await page.fill('input[name="username"]', config.editor.username);
  await page.fill('input[name="password"]', "sai-mật-khẩu");
  await page.click('#login-form button[type="submit"]');
  await page.waitForSelector(".form-error:not(:empty)");
  assert.match(await page.textContent(".form-error"), /Tên đăng nhập hoặc mật khẩu không đúng/);
  await shot(page, "desktop-dang-nhap");
  }));

test("an editor uploads an MP3 by drag and drop, with progress, and submits it", () =>
  onPage(desktop, "upload", async (page) => {
  await login(page, config.editor);
  await open(page, "chuong-trinh");
  // Slow the upload down so the progress bar has something to show.
  const cdp = await desktop.newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 20,
    downloadThroughput: -1,
    uploadThroughput: 48 * 1024,
  });
  await page.evaluate(() => {
    window.__progress = [];
    const bar = document.getElementById("upload-bar");
    new MutationObserver(() => window.__progress.push(Number(bar.value))).observe(bar, { attributes: true });
  });
  const name = path.basename(config.mp3);
  const b64 = fs.readFileSync(config.mp3).toString("base64");
  const dataTransfer = await page.evaluateHandle(
    ({ b64, name }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, { type: "audio/mpeg" }));
      return dt;
    },
    { b64, name },
  );
  await action("kéo thả tệp MP3 vào ô tải lên", async () => {
    await page.dispatchEvent("#dropzone", "dragover", { dataTransfer });
    await page.dispatchEvent("#dropzone", "drop", { dataTransfer });
  });
  assert.equal(await page.inputValue("#upload-title"), "Bản tin chuyển đổi số");
  assert.equal(await page.inputValue("#upload-category"), "chuyen-doi-so");
  await action("bấm “Tải lên và gửi duyệt”", () => page.click("#upload-submit"));
  await page.waitForSelector("#upload-progress:not([hidden])");
  await shot(page, "desktop-chuong-trinh-dang-tai-len");
  const item = page.locator('li[data-title="Bản tin chuyển đổi số"]');
  await item.waitFor({ timeout: 90000 });
  assert.equal(await item.getAttribute("data-status"), "pending");
  state.programmeId = (await item.getAttribute("id")).replace(/^prog-/, "");
  state.uploadProgress = await page.evaluate(() => window.__progress);
  log("upload progress seen:", state.uploadProgress.join(" "));
  assert.ok(state.uploadProgress.some((v) => v > 0 && v < 100), "an intermediate progress value was shown");
  assert.ok(state.uploadProgress.includes(100));
  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  // Editors may not approve.
  assert.equal(await page.locator(`#approve-${state.programmeId}`).count(), 0);
  await shot(page, "desktop-chuong-trinh-cho-duyet");
  await page.click("#logout");
  }));

test("the approver approves it and schedules it twice a week", () =>
  onPage(desktop, "approve", async (page) => {
    // The form starts on today's date: do not let the play cross local
    // midnight (nor the report's week).
    const toMidnight = 86400000 - ((Date.now() + 7 * 3600 * 1000) % 86400000);
    if (toMidnight < (LEAD_SECONDS + 90) * 1000) {
      log(`waiting ${Math.ceil(toMidnight / 1000)} s for local midnight to pass`);
      await new Promise((r) => setTimeout(r, toMidnight + 2000));
    }
  await login(page, config.approver);
  await open(page, "chuong-trinh");
  const id = state.programmeId;
  await action("bấm “Duyệt” chương trình", () => page.click(`#approve-${id}`));
  await page.waitForSelector(`#prog-${id}[data-status="approved"]`);
  await action("bấm “Đặt lịch”", () => page.click(`#schedule-${id}`));
  await page.waitForSelector("#schedule-form");
  assert.equal(await page.inputValue("#sch-programme"), id);
  const at = vietnam(Date.now() + LEAD_SECONDS * 1000);
  const days = [DAYS[at.weekday], DAYS[(at.weekday + 3) % 7]];
  for (const d of days) {
    await action(`chọn ngày ${d}`, () => page.check(`input[name="sch-day"][value="${d}"]`));
  }
  await action(`nhập giờ phát ${at.time}`, () => page.fill("#sch-time", at.time));
  assert.equal(await page.inputValue("#sch-date"), at.date);
  // The conflict check runs before saving.
  await page.waitForSelector("#preview-result");
  assert.equal(await page.getAttribute("#preview-result", "data-conflicts"), "0");
  assert.equal(await page.getAttribute("#preview-result", "data-quiet"), "0");
  await shot(page, "desktop-lich-phat-truoc-khi-luu");
  await action("bấm “Lưu”", () => page.click("#sch-save"));
  const row = page.locator('#schedule-list li[data-status="approved"]').first();
  await row.waitFor();
  state.scheduleId = (await row.getAttribute("id")).replace(/^sch-/, "");
  const text = await row.textContent();
  assert.match(text, /Hằng tuần/);
  log(`scheduled ${state.scheduleId} at ${at.date} ${at.time} on ${days.join(",")}: ${state.bulletinSteps.length} actions`);
  assert.ok(state.bulletinSteps.length <= 8, `${state.bulletinSteps.length} actions`);
  await page.waitForSelector(".calendar .event");
  await shot(page, "desktop-lich-phat");
  }));

test("the play appears in the report after the receivers played it", () =>
  onPage(desktop, "report", async (page) => {
  await login(page, config.approver);
  const deadline = Date.now() + (LEAD_SECONDS + 90) * 1000;
  let completed = 0;
  while (Date.now() < deadline) {
    await open(page, "bao-cao");
    await page.waitForSelector("#plays-completed");
    completed = Number(await page.textContent("#plays-completed"));
    if (completed >= config.receiverWavs.length) break;
    await page.waitForTimeout(3000);
  }
  assert.ok(completed >= config.receiverWavs.length, `completed plays in the report: ${completed}`);
  assert.match(await page.textContent("#plays-table"), /Bản tin chuyển đổi số/);
  await shot(page, "desktop-bao-cao");
  await page.click("#tab-1");
  await page.waitForSelector("#bulletin-chart");
  assert.match(await page.textContent("#bulletin-table"), /Xã Tân Linh/);
  await shot(page, "desktop-bao-cao-chuyen-doi-so");
  const csv = await Promise.all([page.waitForEvent("download"), page.click("#bulletin-csv")]);
  const text = fs.readFileSync(await csv[0].path(), "utf8");
  assert.match(text, /^unit_id,unit,week,bulletins,target,met/);
  }));

test("an emergency broadcast from the top bar reaches the loudspeakers in two clicks", () =>
  onPage(desktop, "emergency", async (page) => {
  await login(page, config.approver);
  await open(page, "tong-quan");
  const start = config.receiverWavs.map((f) => wavInfo(f).samples);
  const t0 = Date.now();
  await page.click("#emergency-top");
  state.emergencyClicks += 1;
  await page.click('dialog [data-value="start"]');
  state.emergencyClicks += 1;
  const heard = config.receiverWavs.map(() => null);
  const firstSample = config.receiverWavs.map(() => null);
  while (heard.some((h) => h === null) && Date.now() - t0 < 15000) {
    config.receiverWavs.forEach((f, i) => {
      if (heard[i] !== null) return;
      const at = firstLoud(f, start[i], 0.02);
      if (at >= 0) {
        heard[i] = (Date.now() - t0) / 1000;
        firstSample[i] = at;
      }
    });
    await new Promise((r) => setTimeout(r, 20));
  }
  state.emergencySeconds = heard.filter((h) => h !== null);
  log("emergency: sound after", heard.map((h) => (h === null ? "never" : `${h.toFixed(2)} s`)).join(" / "));
  assert.ok(heard.every((h) => h !== null), "every receiver played the emergency");
  await page.waitForSelector('#on-air[data-state="on-air"]');
  // Let the sentence play through at least once before stopping.
  await page.waitForTimeout(9000);
  await shot(page, "desktop-truc-tiep-dang-phat");
  await page.click("#stop-live");
  await page.waitForSelector("#on-air", { state: "detached", timeout: 10000 });
  await page.waitForTimeout(1500);
  state.emergencySpans = config.receiverWavs.map((f, i) => [Math.max(start[i], firstSample[i] - 4800), wavInfo(f).samples]);
  }));

test("on Cụm loa a technician sets the volume and plays a test tone", () =>
  onPage(desktop, "receivers", async (page) => {
  await login(page, config.admin);
  await open(page, "cum-loa");
  const id = config.receiverIds[0];
  const row = page.locator(`#rcv-${id}`);
  await row.locator('[data-amplifier="off"]').waitFor();
  assert.match(await row.textContent(), /Loa: đang tắt/);
  // Move the slider; it saves when released.
  const slider = row.locator("input.volume");
  await slider.focus();
  await slider.fill("40");
  await row.locator(".control-result.ok").waitFor();
  assert.match(await row.locator(".control-result").textContent(), /Đã lưu âm lượng 40%/);
  state.toneVolume = 40;
  // The receiver reports the new volume in its status.
  const reported = async () => {
    const token = await page.evaluate(() => localStorage.getItem("loa.token"));
    const r = await fetch(`${config.base}/api/v1/receivers/${id}`, { headers: { Authorization: `Bearer ${token}` } });
    return r.json();
  };
  let status = await reported();
  for (let i = 0; i < 50 && status.reported_volume !== 40; i++) {
    await page.waitForTimeout(200);
    status = await reported();
  }
  assert.equal(status.reported_volume, 40, `the receiver reports volume 40: ${JSON.stringify(status)}`);
  // The emergency level has its own slider, saved the same way.
  const emergency = page.locator(`#rcv-${id} input.emergency-volume`);
  await emergency.focus();
  await emergency.fill("80");
  await page.locator(`#rcv-${id} .control-result.ok`, { hasText: "khẩn cấp 80%" }).waitFor();
  status = await reported();
  assert.equal(status.emergency_volume, 80, `emergency volume stored: ${JSON.stringify(status)}`);
  assert.equal(status.volume, 40, "the normal volume is kept");
  // The test tone: the amplifier goes on, the WAV gets the tone, then off.
  const wav = config.receiverWavs[0];
  const from = wavInfo(wav).samples;
  await row.locator("[data-test-tone]").click();
  await row.locator(".control-result.ok", { hasText: "phát âm thử" }).waitFor();
  await page.locator(`#rcv-${id} [data-amplifier="on"]`).waitFor({ timeout: 10000 });
  assert.match(await page.locator(`#rcv-${id}`).textContent(), /Loa: đang bật/);
  await shot(page, "desktop-cum-loa-am-thu");
  await page.locator(`#rcv-${id} [data-amplifier="off"]`).waitFor({ timeout: 15000 });
  assert.ok(firstLoud(wav, from, 0.05) >= 0, "the receiver's output holds the tone");
  state.toneSpan = [from, wavInfo(wav).samples];
  log("test tone: samples", state.toneSpan.join("…"));
  }));

/** A device as a receiver enrolling would be: its own Ed25519 key and code. */
function enrollingDevice() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
  const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url");
  const digest = crypto.createHash("sha256").update(raw).digest();
  let bits = 0n;
  for (const b of digest.subarray(0, 5)) bits = (bits << 8n) | BigInt(b);
  const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  let chars = "";
  for (let i = 0; i < 8; i++) chars += alphabet[Number((bits >> BigInt(35 - 5 * i)) & 31n)];
  return { publicKey: raw.toString("base64"), code: `${chars.slice(0, 4)}-${chars.slice(4)}`, privateKey };
}

function postJson(path, body) {
  return fetch(`${config.base}/api/v1${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

/** The device's signed claim for its credential. */
function claim(device) {
  const timestamp = Math.floor(Date.now() / 1000);
  const signed = Buffer.from(`loa/v1/enrollment-claim\n${device.publicKey}|${timestamp}`);
  const signature = crypto.sign(null, signed, device.privateKey).toString("base64");
  return postJson("/enrollments/claim", { public_key: device.publicKey, timestamp, signature });
}

test("on Cụm loa a technician accepts a device waiting for enrollment and rejects another", () =>
  onPage(desktop, "enrollment", async (page) => {
  const good = enrollingDevice();
  const stranger = enrollingDevice();
  for (const [device, hostname] of [[good, "may-loa-moi"], [stranger, "may-la"]]) {
    const r = await postJson("/enrollments", { public_key: device.publicKey, code: device.code, hostname });
    assert.equal(r.status, 202, await r.text());
  }
  assert.equal((await claim(good)).status, 202, "pending until accepted");
  await login(page, config.admin);
  await open(page, "cum-loa");
  const row = page.locator(`#enroll-${good.code}`);
  await row.waitFor();
  assert.match(await row.textContent(), /may-loa-moi/);
  assert.match(await page.textContent("body"), /Thiết bị chờ đăng ký/);
  await shot(page, "desktop-cum-loa-cho-dang-ky");
  await row.locator("[data-accept]").click();
  await page.fill("#enroll-id", "loa-dang-ky");
  await page.fill("#enroll-name", "Loa đăng ký thử");
  await page.click('dialog [data-value="yes"]');
  await page.locator(`#enroll-${good.code}`).waitFor({ state: "detached" });
  await page.locator("#rcv-loa-dang-ky").waitFor();
  const granted = await claim(good);
  assert.equal(granted.status, 200);
  const grant = await granted.json();
  assert.equal(grant.receiver_id, "loa-dang-ky");
  assert.ok(grant.token && grant.controller_key, JSON.stringify(grant));
  assert.equal((await claim(good)).status, 409, "the credential is handed out once");
  await page.locator(`#enroll-${stranger.code} [data-reject]`).click();
  await page.click('dialog [data-value="yes"]');
  await page.locator(`#enroll-${stranger.code}`).waitFor({ state: "detached" });
  assert.equal((await claim(stranger)).status, 403);
  // The enrolled device never runs here: remove it so later steps see only the real receivers.
  const token = await page.evaluate(() => localStorage.getItem("loa.token"));
  const removed = await fetch(`${config.base}/api/v1/receivers/loa-dang-ky`, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } });
  assert.equal(removed.status, 204);
  }));

async function everyPage(context, prefix, checkWidth) {
  const page = await context.newPage();
  page.on("pageerror", (e) => log("page error:", e.message));
  await loggedOut(page);
  await shot(page, `${prefix}-dang-nhap`);
  await login(page, config.admin);
  for (const slug of PAGES) {
    await open(page, slug);
    await page.waitForTimeout(400);
    if (checkWidth) {
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `${slug} is ${overflow}px wider than a phone screen`);
    }
    const title = await page.textContent(".page-title");
    assert.ok(title && !/undefined/.test(title), `${slug} has a title`);
    await shot(page, `${prefix}-${slug}`);
  }
  // The English toggle.
  await page.click("button.lang");
  await open(page, "chuong-trinh");
  assert.match(await page.textContent(".nav"), /Programmes/);
  await shot(page, `${prefix}-english`);
  await page.click("button.lang");
  await page.close();
}

test("every page, at desktop and phone width, for screenshots", async () => {
  await everyPage(desktop, "desktop", false);
  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true, locale: "vi-VN", timezoneId: "Asia/Ho_Chi_Minh" });
  await everyPage(phone, "phone", true);
  await phone.close();
});

// The controller's HTTP API (`/api/v1`), with the session token kept in
// localStorage. Every failure becomes an ApiError carrying the server's
// Vietnamese message; a 401 logs the console out.

import { lang, t } from "./i18n.js";

const TOKEN = "loa.token";

export function token() {
  return localStorage.getItem(TOKEN);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN, value);
  else localStorage.removeItem(TOKEN);
}

export class ApiError extends Error {
  constructor(status, body) {
    const vi = body && body.message_vi;
    const en = body && body.error;
    super((lang() === "en" ? en || vi : vi || en) || t("Có lỗi xảy ra."));
    this.status = status;
    this.code = (body && body.code) || "error";
  }
}

async function failure(response, path, sent) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  expired(response.status, path, sent);
  return new ApiError(response.status, body);
}

/** A 401 logs the console out, unless it is a refused login (a wrong
 * password) or the answer to a request sent with an earlier session's
 * token (it finished after a logout or a new login: that session is
 * already gone, and the current one is fine). */
function expired(status, path, sent) {
  if (status === 401 && path !== "/login" && sent && sent === token()) {
    setToken(null);
    window.dispatchEvent(new Event("loa:logout"));
  }
}

function headers(json) {
  const h = {};
  const tk = token();
  if (tk) h.Authorization = `Bearer ${tk}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

/** Sends a JSON request; answers the parsed JSON (or null for 204). */
export async function api(method, path, body) {
  let response;
  const sent = token();
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { message_vi: t("Không kết nối được với máy chủ.") });
  }
  if (!response.ok) throw await failure(response, path, sent);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => api("PATCH", path, body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path) => api("DELETE", path);

/** Fetches a file (audio, CSV) with the session token, as a Blob. */
export async function blob(path) {
  const sent = token();
  const response = await fetch(`/api/v1${path}`, { headers: headers(false) });
  if (!response.ok) throw await failure(response, path, sent);
  return response.blob();
}

/**
 * Uploads a multipart form with XMLHttpRequest so the upload's progress
 * can be shown: `onProgress(fraction)` while bytes go out, then
 * `onSent()` once they are all sent (the server then transcodes).
 */
export function upload(path, form, onProgress, onSent) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1${path}`);
    const tk = token();
    if (tk) xhr.setRequestHeader("Authorization", `Bearer ${tk}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.upload.onload = () => onSent && onSent();
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else {
        expired(xhr.status, path, tk);
        reject(new ApiError(xhr.status, xhr.response));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, { message_vi: t("Không kết nối được với máy chủ.") }));
    xhr.send(form);
  });
}

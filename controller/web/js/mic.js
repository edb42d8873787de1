// The browser's microphone as a live broadcast, over the controller's
// WebSocket `/api/v1/live/ws` (protocol in controller/src/api/live_ws.rs):
// first message JSON {sample_rate, format: "f32le", token, zones,
// receivers, priority}; the server answers {"type":"started"}; then binary
// little-endian float32 mono chunks of 20 ms; {"type":"stop"} ends it; the
// server sends {"type":"ended"} or {"type":"error", message_vi}.

import { token } from "./api.js";
import { lang } from "./i18n.js";

/**
 * Starts a broadcast. `on.state(name, detail)` is told "connecting",
 * "on-air" (detail: the broadcast), "ended" (detail: reason) and "error"
 * (detail: message); `on.level(peak)` gets the input level every 20 ms.
 * Resolves with a handle whose `stop()` ends the broadcast.
 */
export async function startLive({ zones, receivers, priority }, on) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error(
      lang() === "en"
        ? "This browser cannot use the microphone here (the console must be opened over HTTPS or on this machine)."
        : "Trình duyệt không cho dùng micrô ở đây (cần mở bảng điều khiển qua HTTPS hoặc trên chính máy chủ).",
    );
  }
  on.state("connecting");
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const context = new AudioContext({ latencyHint: "interactive" });
  await context.audioWorklet.addModule("/assets/js/mic-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(context, "loa-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    channelCount: 1,
    channelCountMode: "explicit",
    channelInterpretation: "speakers",
  });
  // A silent path to the output keeps the graph pulling the worklet.
  const mute = context.createGain();
  mute.gain.value = 0;
  source.connect(capture);
  capture.connect(mute);
  mute.connect(context.destination);
  if (context.state !== "running") await context.resume();

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live/ws`);
  ws.binaryType = "arraybuffer";
  let onAir = false;
  let closed = false;

  const cleanup = () => {
    if (closed) return;
    closed = true;
    capture.port.onmessage = null;
    stream.getTracks().forEach((tr) => tr.stop());
    context.close().catch(() => {});
  };

  capture.port.onmessage = (e) => {
    on.level && on.level(e.data.peak);
    if (onAir && ws.readyState === WebSocket.OPEN) ws.send(e.data.samples);
  };
  ws.onopen = () => {
    ws.send(JSON.stringify({ sample_rate: context.sampleRate, format: "f32le", token: token(), zones, receivers, priority }));
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    let m;
    try {
      m = JSON.parse(e.data);
    } catch {
      return;
    }
    if (m.type === "started") {
      onAir = true;
      on.state("on-air", m.broadcast);
    } else if (m.type === "ended") {
      onAir = false;
      cleanup();
      on.state("ended", m.reason);
    } else if (m.type === "error") {
      onAir = false;
      cleanup();
      on.state("error", (lang() === "en" ? m.error : m.message_vi) || m.error);
    }
  };
  ws.onclose = () => {
    if (!closed) {
      cleanup();
      on.state("ended", "closed");
    }
  };
  ws.onerror = () => {};

  return {
    stop() {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
      else ws.close();
      setTimeout(() => {
        if (!closed) {
          ws.close();
          cleanup();
        }
      }, 3000);
    },
  };
}

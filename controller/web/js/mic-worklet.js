// Audio worklet: collects the microphone's mono samples into 20 ms chunks
// (at the context's rate) and posts each chunk, plus its peak level, to
// the page, which sends it over the live WebSocket.

class LoaCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = Math.round(sampleRate / 50);
    this.buffer = new Float32Array(this.chunk);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    let offset = 0;
    while (offset < input.length) {
      const n = Math.min(this.chunk - this.filled, input.length - offset);
      this.buffer.set(input.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.chunk) {
        let peak = 0;
        for (let i = 0; i < this.chunk; i++) peak = Math.max(peak, Math.abs(this.buffer[i]));
        this.port.postMessage({ samples: this.buffer.buffer, peak }, [this.buffer.buffer]);
        this.buffer = new Float32Array(this.chunk);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("loa-capture", LoaCapture);

// Call quality from RTCPeerConnection.getStats: round-trip time, packet loss
// and bitrate per peer, shown as an indicator and sent to the server as
// `stats`, which answers with `adapt` (see peer-mesh.js for what adapt does).

export const SAMPLE_INTERVAL_MS = 3000;

// One reading of a peer connection's statistics.
export async function readStats(pc) {
  const report = await pc.getStats();
  const out = {
    rttMs: null,
    localCandidateType: null,
    remoteCandidateType: null,
    framesDecoded: 0,
    framesPerSecond: 0,
    bytesReceived: 0,
    bytesSent: 0,
    packetsReceived: 0,
    packetsLost: 0,
    remoteFractionLost: null,
    availableOutgoingKbps: null,
  };
  let pair = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  if (pair) {
    if (typeof pair.currentRoundTripTime === "number") out.rttMs = pair.currentRoundTripTime * 1000;
    if (typeof pair.availableOutgoingBitrate === "number") out.availableOutgoingKbps = pair.availableOutgoingBitrate / 1000;
    const local = report.get(pair.localCandidateId);
    const remote = report.get(pair.remoteCandidateId);
    out.localCandidateType = local ? local.candidateType : null;
    out.remoteCandidateType = remote ? remote.candidateType : null;
  }
  report.forEach((s) => {
    if (s.type === "inbound-rtp") {
      out.bytesReceived += s.bytesReceived || 0;
      out.packetsReceived += s.packetsReceived || 0;
      out.packetsLost += Math.max(0, s.packetsLost || 0);
      if (s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.framesPerSecond += s.framesPerSecond || 0;
      }
    } else if (s.type === "outbound-rtp") {
      out.bytesSent += s.bytesSent || 0;
    } else if (s.type === "remote-inbound-rtp" && typeof s.fractionLost === "number") {
      out.remoteFractionLost = Math.max(out.remoteFractionLost || 0, s.fractionLost);
      if (out.rttMs === null && typeof s.roundTripTime === "number") out.rttMs = s.roundTripTime * 1000;
    }
  });
  return out;
}

export function level(sample) {
  if (!sample || sample.rttMs === null) return "unknown";
  if (sample.rttMs < 150 && sample.loss < 0.02) return "good";
  if (sample.rttMs < 400 && sample.loss < 0.08) return "fair";
  return "poor";
}

// Turns two readings into rates.
function derive(previous, current, seconds) {
  const sample = {
    rttMs: current.rttMs,
    loss: 0,
    sendKbps: 0,
    availableKbps: current.availableOutgoingKbps,
    recvKbps: 0,
    framesPerSecond: current.framesPerSecond,
    videoFlowing: true,
    // "relay" when the media goes through TURN, else a direct path.
    route: current.localCandidateType === "relay" || current.remoteCandidateType === "relay" ? "relay" : "direct",
  };
  if (previous && seconds > 0) {
    sample.sendKbps = Math.max(0, ((current.bytesSent - previous.bytesSent) * 8) / 1000 / seconds);
    sample.recvKbps = Math.max(0, ((current.bytesReceived - previous.bytesReceived) * 8) / 1000 / seconds);
    const received = current.packetsReceived - previous.packetsReceived;
    const lost = current.packetsLost - previous.packetsLost;
    const incomingLoss = received + lost > 0 ? Math.max(0, lost) / (received + lost) : 0;
    sample.loss = current.remoteFractionLost !== null ? Math.max(current.remoteFractionLost, incomingLoss) : incomingLoss;
    sample.videoFlowing = current.framesDecoded > previous.framesDecoded;
  }
  return sample;
}

export class QualityMonitor extends EventTarget {
  constructor({ mesh, sendStats }) {
    super();
    this.mesh = mesh;
    this.sendStats = sendStats;
    this.previous = new Map();
    this.samples = new Map();
    this.timer = null;
    this.running = false;
  }

  start() {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), SAMPLE_INTERVAL_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.previous.clear();
    this.samples.clear();
  }

  async tick() {
    if (this.running) return;
    this.running = true;
    try {
      const now = performance.now();
      for (const [peerId, link] of this.mesh.links) {
        if (link.pc.connectionState !== "connected") {
          this.samples.delete(peerId);
          this.previous.delete(peerId);
          continue;
        }
        const current = await readStats(link.pc);
        const before = this.previous.get(peerId);
        const sample = derive(before && before.reading, current, before ? (now - before.at) / 1000 : 0);
        this.previous.set(peerId, { reading: current, at: now });
        this.samples.set(peerId, sample);
        this.dispatchEvent(new CustomEvent("sample", { detail: { peer: peerId, sample, level: level(sample) } }));
      }
      for (const peerId of [...this.samples.keys()]) {
        if (!this.mesh.links.has(peerId)) this.samples.delete(peerId);
      }
      const summary = this.summary();
      this.dispatchEvent(new CustomEvent("summary", { detail: summary }));
      if (summary) this.sendStats(summary);
    } catch (err) {
      console.warn("quality: getStats failed:", err);
    } finally {
      this.running = false;
    }
  }

  // What the server needs to advise our sending rate: the worst round trip
  // and loss over all peers, and as bitrate the smallest bandwidth estimate
  // of the browser's congestion control (the one cap applies to every
  // peer). Not the rate we send: a still picture or audio-only sends
  // little, and advice based on that would never let video back.
  // `send_kbps` (what we send in total) is for display.
  summary() {
    if (this.samples.size === 0) return null;
    let rtt = 0;
    let loss = 0;
    let sent = 0;
    let estimate = Infinity;
    for (const s of this.samples.values()) {
      rtt = Math.max(rtt, s.rttMs || 0);
      loss = Math.max(loss, s.loss || 0);
      sent += s.sendKbps || 0;
      if (s.availableKbps > 0) estimate = Math.min(estimate, s.availableKbps);
    }
    const summary = {
      rtt_ms: Math.round(rtt),
      loss: Math.round(loss * 1000) / 1000,
      bitrate_kbps: Math.round(Number.isFinite(estimate) ? estimate : sent),
      send_kbps: Math.round(sent),
    };
    return { ...summary, level: level({ rttMs: summary.rtt_ms, loss: summary.loss }) };
  }
}

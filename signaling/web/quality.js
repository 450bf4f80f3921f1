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
    // For a relay candidate: its relayed address and the TURN server it came from.
    localCandidateAddress: null,
    localCandidateUrl: null,
    remoteCandidateAddress: null,
    framesDecoded: 0,
    framesPerSecond: 0,
    bytesReceived: 0,
    bytesSent: 0,
    framesSent: 0,
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
    out.localCandidateAddress = local ? local.address || local.ip || null : null;
    out.localCandidateUrl = local ? local.url || null : null;
    out.remoteCandidateAddress = remote ? remote.address || remote.ip || null : null;
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
      if (s.kind === "video") out.framesSent += s.framesSent || 0;
    } else if (s.type === "remote-inbound-rtp" && typeof s.fractionLost === "number") {
      out.remoteFractionLost = Math.max(out.remoteFractionLost || 0, s.fractionLost);
      if (out.rttMs === null && typeof s.roundTripTime === "number") out.rttMs = s.roundTripTime * 1000;
    }
  });
  return out;
}

// Fewer packets than this in one interval say nothing about loss: a path that
// was just (re)connected, or a peer that sends almost nothing.
export const MIN_PACKETS_FOR_LOSS = 20;

export function level(sample) {
  if (!sample || sample.rttMs === null || sample.loss === null) return "unknown";
  if (sample.rttMs < 150 && sample.loss < 0.02) return "good";
  if (sample.rttMs < 400 && sample.loss < 0.08) return "fair";
  return "poor";
}

// Turns two readings into rates.
// Without a previous reading (the first tick, or the first after the
// connection came back) there is no interval to measure: loss stays null,
// "unknown", and is not reported. Reporting 0 there told the server that a
// path which had just dropped was clean, and video came back for one
// interval in the middle of heavy loss.
function derive(previous, current, seconds) {
  const sample = {
    rttMs: current.rttMs,
    loss: null,
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
    const lost = Math.max(0, current.packetsLost - previous.packetsLost);
    const incomingLoss = received + lost >= MIN_PACKETS_FOR_LOSS ? lost / (received + lost) : null;
    const losses = [incomingLoss, current.remoteFractionLost].filter((l) => l !== null);
    sample.loss = losses.length > 0 ? Math.max(...losses) : null;
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
  // Peers whose loss is unknown this interval are left out; with none
  // measured there is nothing to report (null), rather than a clean path.
  summary() {
    const measured = [...this.samples.values()].filter((s) => s.loss !== null);
    if (measured.length === 0) return null;
    let rtt = 0;
    let loss = 0;
    let sent = 0;
    let estimate = Infinity;
    for (const s of measured) {
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

// One RTCPeerConnection per remote peer in the room (a full mesh), negotiated
// with the "perfect negotiation" pattern so that both sides may offer at the
// same time: the polite peer (the larger peer id) rolls back on a collision,
// the impolite one ignores the colliding offer.
//
// Collisions are still avoided in the common case: the peer that joins
// offers to the peers already there, and those add their tracks only when
// the offer arrives (a rollback while a TURN allocation is under way can
// leave ICE gathering stuck in Chromium).

// ICE restarts come from the impolite side, so that both sides do not offer
// at once; the polite side waits longer and restarts only if nothing came.
const DISCONNECTED_GRACE_MS = { impolite: 3000, polite: 12000 };
const FAILED_GRACE_MS = { impolite: 0, polite: 10000 };
// A connection that makes no progress for this long gets an ICE restart.
const STALL_MS = { impolite: 10000, polite: 20000 };
// An offer without an answer for this long was lost (the peer was away):
// take it back and offer again.
const OFFER_TIMEOUT_MS = { impolite: 6000, polite: 9000 };
const WATCHDOG_MS = 2500;
// No local candidate after this long: the relay (or the network) is unreachable.
const GATHERING_TIMEOUT_MS = 8000;

export class PeerLink {
  constructor(mesh, peerId, name, { offer }) {
    this.mesh = mesh;
    this.peerId = peerId;
    this.name = name || peerId;
    this.polite = mesh.selfId > peerId;
    this.role = this.polite ? "polite" : "impolite";
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.remoteStream = new MediaStream();
    this.signalChain = Promise.resolve();
    this.disconnectedTimer = null;
    this.closed = false;
    this.tracksAdded = false;
    this.offerSentAt = 0;
    this.candidatesGathered = 0;
    this.gatheringSince = 0;
    this.gatheringReported = false;
    this.lastProgress = Date.now();
    // While the peer is away from the server (its socket dropped), offers
    // and ICE restarts would only queue up for it: wait until it is back.
    this.awayUntil = 0;
    this.pc = new RTCPeerConnection(mesh.rtcConfiguration());
    this.wire();
    if (offer) this.addTracks({ offering: true });
    this.watchdog = setInterval(() => this.checkProgress(), WATCHDOG_MS);
  }

  // Adding tracks makes the connection negotiate (onnegotiationneeded).
  // Without a camera or microphone, the offering side still asks to receive.
  addTracks({ offering = false } = {}) {
    if (this.tracksAdded) return;
    this.tracksAdded = true;
    const tracks = this.mesh.localStream.getTracks();
    for (const track of tracks) {
      this.pc.addTrack(track, this.mesh.localStream);
    }
    if (offering) {
      for (const kind of ["audio", "video"]) {
        if (!tracks.some((t) => t.kind === kind)) this.pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
  }

  // Nothing to connect with: say so rather than show "connecting…" forever.
  reportNoCandidates() {
    if (this.gatheringReported) return;
    this.gatheringReported = true;
    this.mesh.emit("ice-problem", {
      peer: this.peerId,
      reason: this.mesh.relayOnly
        ? "No TURN relay address could be obtained, so this relay-only call cannot connect. The TURN server may be unreachable from this browser or may have refused the credentials."
        : "No network address could be gathered for this call.",
    });
  }

  away() {
    return this.awayUntil > Date.now();
  }

  checkProgress() {
    const pc = this.pc;
    if (this.closed || this.away()) return;
    if (
      pc.iceGatheringState === "gathering" &&
      this.candidatesGathered === 0 &&
      Date.now() - this.gatheringSince > GATHERING_TIMEOUT_MS
    ) {
      this.reportNoCandidates();
    }
    if (
      pc.signalingState === "have-local-offer" &&
      this.offerSentAt > 0 &&
      Date.now() - this.offerSentAt > OFFER_TIMEOUT_MS[this.role]
    ) {
      this.renegotiate("no answer to our offer");
      return;
    }
    if (pc.connectionState === "connected") {
      this.lastProgress = Date.now();
      return;
    }
    const stall = STALL_MS[this.role];
    if (Date.now() - this.lastProgress < stall || pc.signalingState !== "stable" || !pc.remoteDescription) return;
    this.restartIce(`no progress for ${stall} ms in state ${pc.connectionState}`);
  }

  // Starts negotiation afresh: withdraws an unanswered offer first.
  renegotiate(reason) {
    if (this.away()) return;
    this.offerSentAt = 0;
    this.lastProgress = Date.now();
    this.signalChain = this.signalChain
      .then(async () => {
        if (this.closed) return;
        console.warn("peer", this.peerId, "renegotiating:", reason);
        if (this.pc.signalingState === "have-local-offer") {
          await this.pc.setLocalDescription({ type: "rollback" });
        }
        this.pc.restartIce();
      })
      .catch((err) => console.error("peer", this.peerId, "renegotiation failed:", err));
  }

  // The peer is back in the room (its session resumed, maybe after a server
  // restart): what we sent while it was away may be lost.
  onPeerReturned() {
    this.awayUntil = 0;
    this.lastProgress = Date.now();
    const pc = this.pc;
    if (pc.connectionState === "connected" && pc.signalingState === "stable") return;
    if (!this.polite) this.renegotiate("the peer is back");
  }

  restartIce(reason) {
    if (this.closed || this.away()) return;
    console.warn("peer", this.peerId, "restarting ICE:", reason);
    this.lastProgress = Date.now();
    this.pc.restartIce();
  }

  restartIceLater(delay, state, reason) {
    clearTimeout(this.disconnectedTimer);
    this.disconnectedTimer = setTimeout(() => {
      if (this.pc.connectionState === state) this.restartIce(reason);
    }, delay);
  }

  wire() {
    const pc = this.pc;
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        console.info("peer", this.peerId, "sending", pc.localDescription.type);
        if (pc.localDescription.type === "offer") this.offerSentAt = Date.now();
        this.send({ description: pc.localDescription.toJSON() });
      } catch (err) {
        console.error("peer", this.peerId, "offer failed:", err);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return;
      this.candidatesGathered += 1;
      this.send({ candidate: candidate.toJSON() });
    };
    pc.onicegatheringstatechange = () => {
      console.info("peer", this.peerId, "ICE gathering", pc.iceGatheringState);
      if (pc.iceGatheringState === "gathering") {
        this.candidatesGathered = 0;
        this.gatheringSince = Date.now();
        this.gatheringReported = false;
      } else if (pc.iceGatheringState === "complete" && this.candidatesGathered === 0) {
        this.reportNoCandidates();
      }
    };
    pc.onicecandidateerror = (event) => {
      // Typically the TURN server refused or could not be reached.
      console.warn("peer", this.peerId, "ICE candidate error", event.errorCode, event.errorText, "from", event.url);
    };
    pc.ontrack = (event) => {
      const stream = event.streams && event.streams[0];
      if (stream && stream !== this.remoteStream) {
        this.remoteStream = stream;
      } else if (!stream) {
        this.remoteStream.addTrack(event.track);
      }
      this.mesh.emit("track", { peer: this.peerId, stream: this.remoteStream });
    };
    pc.onconnectionstatechange = () => this.onConnectionState();
    pc.onsignalingstatechange = () => {
      if (pc.signalingState === "stable") this.applyAdapt();
    };
  }

  send(data) {
    this.mesh.sendSignal(this.peerId, data);
  }

  onConnectionState() {
    const state = this.pc.connectionState;
    this.lastProgress = Date.now();
    console.info("peer", this.peerId, "connection", state);
    clearTimeout(this.disconnectedTimer);
    if (state === "connected") {
      this.applyAdapt();
    } else if (state === "failed") {
      this.restartIceLater(FAILED_GRACE_MS[this.role], "failed", "connection failed");
    } else if (state === "disconnected") {
      this.restartIceLater(DISCONNECTED_GRACE_MS[this.role], "disconnected", "connection lost");
    }
    this.mesh.emit("state", { peer: this.peerId, connectionState: state });
  }

  // Signals are handled one at a time, in arrival order.
  onSignal(data) {
    this.signalChain = this.signalChain
      .then(() => this.handleSignal(data))
      .catch((err) => console.error("peer", this.peerId, "signal failed:", err));
    return this.signalChain;
  }

  async handleSignal(data) {
    if (this.closed || !data || typeof data !== "object") return;
    const pc = this.pc;
    if (data.description) {
      const description = data.description;
      const readyForOffer =
        !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const offerCollision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && offerCollision;
      if (this.ignoreOffer) {
        console.info("peer", this.peerId, "ignoring a colliding offer (impolite side)");
        return;
      }
      console.info("peer", this.peerId, "received", description.type, "in state", pc.signalingState);
      this.settingRemoteAnswer = description.type === "answer";
      this.offerSentAt = 0;
      await pc.setRemoteDescription(description);
      this.settingRemoteAnswer = false;
      if (description.type === "offer") {
        // Our tracks reuse the transceivers of the offer: one round trip.
        this.addTracks();
        await pc.setLocalDescription();
        console.info("peer", this.peerId, "sending", pc.localDescription.type);
        this.send({ description: pc.localDescription.toJSON() });
      }
    } else if (data.candidate) {
      try {
        await pc.addIceCandidate(data.candidate);
      } catch (err) {
        if (!this.ignoreOffer) throw err;
      }
    }
  }

  // Applies the server's advice to the video senders: a bitrate cap, and no
  // video at all when the network cannot carry it (audio keeps flowing).
  async applyAdapt() {
    const adapt = this.mesh.adapt;
    if (this.closed || this.pc.signalingState !== "stable") return;
    for (const sender of this.pc.getSenders()) {
      if (!sender.track || sender.track.kind !== "video") continue;
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length === 0) continue;
      let changed = false;
      for (const encoding of params.encodings) {
        const active = !adapt.audioOnly;
        if (encoding.active !== active) {
          encoding.active = active;
          changed = true;
        }
        const cap = adapt.maxBitrateKbps > 0 ? Math.round(adapt.maxBitrateKbps * 1000) : undefined;
        if (encoding.maxBitrate !== cap) {
          if (cap === undefined) delete encoding.maxBitrate;
          else encoding.maxBitrate = cap;
          changed = true;
        }
      }
      if (!changed) continue;
      try {
        await sender.setParameters(params);
      } catch (err) {
        console.warn("peer", this.peerId, "could not apply bitrate settings:", err);
      }
    }
  }

  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.disconnectedTimer);
    this.pc.close();
  }
}

export class PeerMesh extends EventTarget {
  constructor({ sendSignal, localStream, relayOnly }) {
    super();
    this.sendSignal = sendSignal;
    this.localStream = localStream;
    this.relayOnly = relayOnly;
    this.selfId = "";
    this.iceServers = [];
    this.links = new Map();
    this.adapt = { audioOnly: false, maxBitrateKbps: 0 };
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  rtcConfiguration() {
    return {
      iceServers: this.iceServers,
      iceTransportPolicy: this.relayOnly ? "relay" : "all",
      bundlePolicy: "max-bundle",
    };
  }

  // A new session (new peer id) or new credentials. Links keep their
  // configuration until they are rebuilt; credentials are refreshed on ICE
  // restarts via setConfiguration.
  configure(selfId, iceServers) {
    const urls = (servers) => JSON.stringify(servers.map((s) => s.urls));
    const moved = this.iceServers.length > 0 && urls(this.iceServers) !== urls(iceServers);
    this.selfId = selfId;
    this.iceServers = iceServers;
    for (const link of this.links.values()) {
      try {
        link.pc.setConfiguration(this.rtcConfiguration());
      } catch (err) {
        console.warn("peer", link.peerId, "keeps its previous ICE configuration:", err);
        continue;
      }
      // Another relay now (e.g. the server restarted with its in-process
      // relay elsewhere): the old relayed path is gone, move at once.
      if (moved && !link.polite) link.restartIce("the TURN servers changed");
    }
  }

  // Connects to a peer; with `offer` we make the first offer, otherwise we
  // wait for the peer's.
  ensurePeer(peerId, name, { offer = false } = {}) {
    let link = this.links.get(peerId);
    if (link) {
      if (name) link.name = name;
      if (offer) link.addTracks({ offering: true });
      return link;
    }
    link = new PeerLink(this, peerId, name, { offer });
    this.links.set(peerId, link);
    this.emit("peer-added", { peer: peerId, name: link.name, link });
    return link;
  }

  removePeer(peerId) {
    const link = this.links.get(peerId);
    if (!link) return;
    link.close();
    this.links.delete(peerId);
    this.emit("peer-removed", { peer: peerId });
  }

  closeAll() {
    for (const peerId of [...this.links.keys()]) this.removePeer(peerId);
  }

  onSignal(from, data) {
    return this.ensurePeer(from).onSignal(data);
  }

  setAdapt(adapt) {
    this.adapt = adapt;
    for (const link of this.links.values()) link.applyAdapt();
  }
}

// Entry point of the demo page: reads the settings from the address, joins a
// room, and wires the signaling client, the peer mesh, chat, quality and UI.
//
// Address parameters (for people, tests and operators):
//   ?room=NAME   room to join (or #NAME)     ?name=NAME  display name
//   ?relay=1     relay-only ICE (TURN)       ?autojoin=1 join without a click
//   ?token=JWT   room token                  ?server=ws://host:port/ws

import { SignalingClient, defaultServerUrl } from "./signaling-client.js";
import { PeerMesh } from "./peer-mesh.js";
import { Chat } from "./chat.js";
import { QualityMonitor, readStats, level } from "./quality.js";
import { openLocalMedia, setTrackEnabled, hasTrack } from "./media.js";
import { awayText } from "./names.js";
import { elements, setBanner, setStatus, setQuality, showCall, showJoin, setChatEnabled, setPeerCount, Tile, renderChat } from "./ui.js";

const ROOM_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const NAME_MAX = 64;

const params = new URLSearchParams(location.search);
const settings = {
  room: params.get("room") || decodeURIComponent(location.hash.slice(1)),
  name: params.get("name") || localStorage.getItem("videochat.name") || "",
  relayOnly: params.get("relay") === "1",
  autojoin: params.get("autojoin") === "1",
  token: params.get("token"),
  serverUrl: defaultServerUrl(params),
};

// The state of the current call; null while on the join form.
let call = null;

function guestName() {
  const n = new Uint16Array(1);
  crypto.getRandomValues(n);
  return "Guest " + (n[0] % 10000).toString().padStart(4, "0");
}

function validate(room, name) {
  if (!ROOM_PATTERN.test(room)) return "The room name must be 1 to 64 letters, digits, dots, dashes or underscores.";
  if (!name || name.length > NAME_MAX) return `Your name must be 1 to ${NAME_MAX} characters.`;
  return null;
}

const STATUS_TEXT = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  draining: "Server restarting, moving…",
  failed: "Disconnected",
  closed: "Not connected",
};

class Call {
  constructor({ room, name, stream }) {
    this.room = room;
    this.name = name;
    this.stream = stream;
    this.joined = false;
    this.hadSession = false;
    this.rejoining = false;
    this.adapt = { audioOnly: false, maxBitrateKbps: 0 };
    // Peers away from the server: peer id -> end of their resume window.
    this.away = new Map();
    this.awayTimer = null;
    // How often video was switched off or on by the server's advice.
    this.adaptSwitches = 0;
    this.tiles = new Map();
    this.peerNames = new Map();
    this.client = new SignalingClient({
      url: settings.serverUrl,
      token: settings.token,
      lastSeqs: () => {
        const seq = this.chat ? this.chat.lastSeq(this.room) : 0;
        return seq > 0 ? { [this.room]: seq } : null;
      },
    });
    this.mesh = new PeerMesh({
      localStream: stream,
      relayOnly: settings.relayOnly,
      sendSignal: (to, data) => this.client.sendOrQueue({ type: "signal", room: this.room, to, data }),
    });
    this.chat = new Chat({ send: (m) => this.client.send(m) });
    this.quality = new QualityMonitor({
      mesh: this.mesh,
      sendStats: (s) => this.sendStats(s),
    });
    this.localTile = new Tile({ id: "local", name, local: true });
    this.localTile.setStream(stream);
    this.wire();
  }

  wire() {
    this.client.addEventListener("status", (e) => this.onStatus(e.detail));
    this.client.addEventListener("welcome", (e) => this.onWelcome(e.detail));
    this.client.addEventListener("message", (e) => this.onMessage(e.detail));
    this.mesh.addEventListener("peer-added", (e) => this.onPeerAdded(e.detail));
    this.mesh.addEventListener("peer-removed", (e) => this.onPeerRemoved(e.detail));
    this.mesh.addEventListener("track", (e) => this.onTrack(e.detail));
    this.mesh.addEventListener("state", (e) => {
      const tile = this.tiles.get(e.detail.peer);
      // An away peer's tile keeps saying so until it is back.
      if (tile && !this.away.has(e.detail.peer)) tile.setState(e.detail.connectionState);
      if (e.detail.connectionState === "connected") setBanner("ice", null);
    });
    this.mesh.addEventListener("ice-problem", (e) => setBanner("ice", e.detail.reason, "error"));
    this.chat.addEventListener("change", (e) => {
      if (e.detail.room === this.room) this.renderChat();
    });
    this.quality.addEventListener("sample", (e) => {
      const tile = this.tiles.get(e.detail.peer);
      if (!tile) return;
      tile.setQuality(e.detail.sample, e.detail.level);
      const link = this.mesh.links.get(e.detail.peer);
      const hasVideo = link && link.remoteStream.getVideoTracks().length > 0;
      tile.setVideoShown(hasVideo && e.detail.sample.videoFlowing);
    });
    this.quality.addEventListener("summary", (e) => setQuality(e.detail, { inCall: true }));
  }

  sendStats(summary) {
    const data = { rtt_ms: summary.rtt_ms, loss: summary.loss };
    // While adapt keeps our video paused we send audio only, and the
    // browser's bandwidth estimate shrinks to fit that: it says nothing about
    // what the path could carry. Leave it out; loss and round trip decide.
    if (!(this.adapt.audioOnly && hasTrack(this.stream, "video"))) data.bitrate_kbps = summary.bitrate_kbps;
    this.client.send({ type: "stats", room: this.room, data });
  }

  start() {
    showCall(this.room);
    setQuality(null, { inCall: true });
    this.client.start();
    this.quality.start();
  }

  onStatus({ state, attempt, delay, reason }) {
    setStatus(state, STATUS_TEXT[state] || state);
    if (state === "open") {
      setBanner("server", null);
    } else if (state === "reconnecting") {
      setChatEnabled(this.joined);
      const seconds = Math.max(1, Math.round((delay || 0) / 1000));
      const text = attempt >= 2
        ? `Cannot reach the signaling server at ${settings.serverUrl}. Retrying in ${seconds} s (attempt ${attempt}); messages you send wait and go out when it is back.`
        : "Connection to the server lost; reconnecting. Your call continues meanwhile.";
      setBanner("server", text, attempt >= 2 ? "error" : "warning");
    } else if (state === "draining") {
      setBanner("server", "The server is restarting; moving this call to another server.", "info");
    } else if (state === "failed") {
      setBanner("server", reason || "Disconnected from the signaling server.", "error");
      setChatEnabled(false);
    }
  }

  onWelcome(welcome) {
    this.chat.selfId = welcome.peer;
    if (settings.relayOnly && welcome.ice_servers.length === 0) {
      setBanner("ice", "Relay-only mode was requested but the server offers no TURN relay; calls cannot connect.", "error");
    }
    if (welcome.resumed) {
      // Same peer id, same rooms: peer connections carry on; only refresh
      // TURN credentials and catch up on chat.
      this.mesh.configure(welcome.peer, welcome.ice_servers);
      this.chat.onReconnected([this.room], { fetchMissed: true });
      setChatEnabled(true);
      return;
    }
    if (this.hadSession) {
      // The old session is gone (resume window passed or another server
      // without it): our peer id changed, so every peer connection restarts.
      console.info("session not resumed; rejoining as", welcome.peer);
      this.mesh.closeAll();
      for (const peer of [...this.tiles.keys()]) this.onPeerRemoved({ peer });
    }
    this.rejoining = this.hadSession;
    this.mesh.configure(welcome.peer, welcome.ice_servers);
    this.client.send({ type: "join", room: this.room, name: this.name, last_seq: this.chat.lastSeq(this.room) });
  }

  onMessage(m) {
    switch (m.type) {
      case "joined": {
        if (m.room !== this.room) return;
        const peers = (Array.isArray(m.peers) ? m.peers : []).filter((p) => p && p.peer !== this.client.peer);
        // Peers missing from the list are not dropped here: after a server
        // restart they reappear as they resume; `peer-left` says who left.
        // We are the newcomer: we offer to everyone already there (a no-op
        // for connections that survived a resume).
        for (const p of peers) this.addPeer(p.peer, p.name, { offer: true });
        this.chat.onJoined(m.room, m.last_seq);
        if (this.rejoining) this.chat.onReconnected([this.room], { fetchMissed: false });
        this.rejoining = false;
        this.hadSession = true;
        this.joined = true;
        setChatEnabled(true);
        return;
      }
      case "peer-joined":
        // The newcomer offers; its offer creates the connection here.
        if (m.room === this.room && m.peer !== this.client.peer) {
          const link = this.mesh.links.get(m.peer);
          this.peerBack(m.peer);
          if (link) link.onPeerReturned();
          this.addPeer(m.peer, m.name, { offer: false });
        }
        return;
      case "peer-away":
        if (m.room === this.room && m.peer !== this.client.peer) this.onPeerAway(m.peer, Number(m.resume_within_ms) || 0);
        return;
      case "peer-left":
        if (m.room === this.room) {
          this.mesh.removePeer(m.peer);
          this.onPeerRemoved({ peer: m.peer });
        }
        return;
      case "signal":
        if (m.room === this.room && typeof m.from === "string") this.mesh.onSignal(m.from, m.data);
        return;
      case "chat":
        this.chat.onChat(m);
        return;
      case "ack":
        this.chat.onAck(m);
        return;
      case "history":
        this.chat.onHistory(m);
        return;
      case "adapt":
        if (m.room === this.room) this.onAdapt(m);
        return;
      case "error":
        this.onError(m);
        return;
      default:
        console.debug("signaling: ignoring message", m.type);
    }
  }

  onError(m) {
    if (this.chat.onError(m)) return;
    console.warn("server error:", m.code, m.message, "ref:", m.ref);
    switch (m.code) {
      case "room_full":
        setBanner("room", `Room “${this.room}” is full. Try another room.`, "error");
        leave();
        return;
      case "unauthorized":
        setBanner("room", "Not allowed in this room: " + (m.message || "the room token is missing or invalid."), "error");
        return;
      case "rate_limited":
        setBanner("rate", "Slow down: the server is limiting how fast this page sends.", "warning");
        setTimeout(() => setBanner("rate", null), 5000);
        return;
      case "unknown_peer":
        // A peer that left while we were negotiating with it.
        return;
      default:
        setBanner("server-error", `Server error (${m.code}): ${m.message || "no details"}`, "warning");
        setTimeout(() => setBanner("server-error", null), 8000);
    }
  }

  onAdapt(m) {
    const audioOnly = m.audio_only === true;
    const maxBitrateKbps = Number(m.max_bitrate_kbps) > 0 ? Number(m.max_bitrate_kbps) : 0;
    const changed = audioOnly !== this.adapt.audioOnly;
    if (changed) this.adaptSwitches += 1;
    this.adapt = { audioOnly, maxBitrateKbps };
    this.mesh.setAdapt(this.adapt);
    if (changed && hasTrack(this.stream, "video")) {
      setBanner(
        "adapt",
        audioOnly ? "The network is too weak for video; your camera is paused and audio continues." : null,
        "info",
      );
      this.localTile.setBadge(audioOnly ? "audio only" : "");
    }
  }

  // The peer's socket dropped; its place is kept for a while. Its tile says
  // so with the time left, and no offers go to it until it is back.
  onPeerAway(peer, withinMs) {
    const until = Date.now() + withinMs;
    this.away.set(peer, until);
    const link = this.mesh.links.get(peer);
    if (link) link.awayUntil = until;
    this.renderAway();
    if (!this.awayTimer) this.awayTimer = setInterval(() => this.renderAway(), 1000);
  }

  renderAway() {
    const now = Date.now();
    for (const [peer, until] of this.away) {
      const tile = this.tiles.get(peer);
      if (!tile || until <= now) {
        this.away.delete(peer);
        continue;
      }
      tile.setAway(awayText(until, now));
    }
    if (this.away.size === 0) {
      clearInterval(this.awayTimer);
      this.awayTimer = null;
    }
  }

  peerBack(peer) {
    if (!this.away.delete(peer)) return;
    const tile = this.tiles.get(peer);
    const link = this.mesh.links.get(peer);
    if (tile && link) tile.setState(link.pc.connectionState);
  }

  addPeer(peerId, name, { offer }) {
    this.peerNames.set(peerId, name || peerId);
    this.ensureTile(peerId);
    if (offer) this.mesh.ensurePeer(peerId, name, { offer: true });
  }

  ensureTile(peer) {
    let tile = this.tiles.get(peer);
    if (!tile) {
      tile = new Tile({ id: peer, name: this.peerNames.get(peer) || peer, local: false });
      tile.setState("new");
      tile.setVideoShown(false);
      this.tiles.set(peer, tile);
      setPeerCount(this.tiles.size + 1);
    }
    return tile;
  }

  onPeerAdded({ peer }) {
    this.ensureTile(peer);
  }

  // A peer that left, or whose connection was closed.
  onPeerRemoved({ peer }) {
    const tile = this.tiles.get(peer);
    if (tile) tile.remove();
    this.tiles.delete(peer);
    this.peerNames.delete(peer);
    this.away.delete(peer);
    setPeerCount(this.tiles.size + 1);
  }

  onTrack({ peer, stream }) {
    const tile = this.tiles.get(peer);
    if (!tile) return;
    tile.setStream(stream, {
      onBlocked: () => {
        // Autoplay with sound needs a click on this page first.
        elements.soundButton.hidden = false;
      },
    });
  }

  renderChat() {
    renderChat(this.chat.view(this.room), { onRetry: (id) => this.chat.retry(id) });
  }

  stop() {
    // `bye` ends the session at once, so others see us leave now rather than
    // after the resume window.
    if (this.joined) this.client.send({ type: "leave", room: this.room });
    this.client.send({ type: "bye" });
    this.quality.stop();
    clearInterval(this.awayTimer);
    this.mesh.closeAll();
    this.client.stop();
    for (const track of this.stream.getTracks()) track.stop();
    this.localTile.remove();
  }

  // A read-only snapshot for tests and for debugging from the console.
  async snapshot() {
    const peers = {};
    for (const [peerId, link] of this.mesh.links) {
      const s = await readStats(link.pc);
      peers[peerId] = {
        name: this.peerNames.get(peerId) || link.name,
        polite: link.polite,
        connectionState: link.pc.connectionState,
        iceConnectionState: link.pc.iceConnectionState,
        signalingState: link.pc.signalingState,
        localCandidateType: s.localCandidateType,
        remoteCandidateType: s.remoteCandidateType,
        localCandidateAddress: s.localCandidateAddress,
        localCandidateUrl: s.localCandidateUrl,
        remoteCandidateAddress: s.remoteCandidateAddress,
        framesDecoded: s.framesDecoded,
        framesSent: s.framesSent,
        bytesReceived: s.bytesReceived,
        bytesSent: s.bytesSent,
        rttMs: s.rttMs,
        quality: this.quality.samples.has(peerId) ? level(this.quality.samples.get(peerId)) : "unknown",
      };
    }
    return {
      signaling: this.client.state,
      session: this.client.session,
      peer: this.client.peer,
      room: this.room,
      name: this.name,
      joined: this.joined,
      relayOnly: settings.relayOnly,
      iceServers: this.client.iceServers.length,
      localTracks: this.stream.getTracks().map((t) => t.kind),
      adapt: { ...this.adapt, switches: this.adaptSwitches },
      peerCount: elements.peerCount.textContent,
      away: [...this.away.keys()],
      initials: this.localTile.avatar.textContent,
      lastSeq: this.chat.lastSeq(this.room),
      peers,
      chat: this.chat.view(this.room).map(({ seq, id, from, name, body, state }) => ({ seq, id, from, name, body, state })),
      banners: [...elements.banners.children].map((b) => b.textContent),
    };
  }
}

async function join(room, name) {
  if (call) return;
  elements.joinButton.disabled = true;
  elements.joinError.textContent = "";
  try {
    localStorage.setItem("videochat.name", name);
    history.replaceState(null, "", location.pathname + location.search + "#" + encodeURIComponent(room));
    setBanner("room", null);
    const { stream, warning } = await openLocalMedia();
    setBanner("media", warning, "warning");
    call = new Call({ room, name, stream });
    elements.micToggle.disabled = !hasTrack(stream, "audio");
    elements.cameraToggle.disabled = !hasTrack(stream, "video");
    elements.micToggle.setAttribute("aria-pressed", "false");
    elements.cameraToggle.setAttribute("aria-pressed", "false");
    call.start();
  } catch (err) {
    console.error("join failed:", err);
    elements.joinError.textContent = "Could not start the call: " + (err && err.message ? err.message : err);
    call = null;
  } finally {
    elements.joinButton.disabled = false;
  }
}

function leave() {
  if (!call) return;
  const current = call;
  call = null;
  current.stop();
  setStatus("idle", "Not connected");
  setBanner("server", null);
  setBanner("adapt", null);
  setBanner("media", null);
  showJoin();
}

// A toggle button keeps its label; aria-pressed="true" means the device is off.
function toggle(button, kind) {
  if (!call) return;
  const off = button.getAttribute("aria-pressed") !== "true";
  setTrackEnabled(call.stream, kind, !off);
  button.setAttribute("aria-pressed", String(off));
  if (kind === "video") call.localTile.setVideoShown(!off);
}

function init() {
  elements.roomInput.value = settings.room;
  // The last name used, else a guest name to change or keep.
  elements.nameInput.value = settings.name || guestName();
  elements.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = elements.roomInput.value.trim();
    const name = elements.nameInput.value.trim();
    const problem = validate(room, name);
    if (problem) {
      elements.joinError.textContent = problem;
      return;
    }
    join(room, name);
  });
  elements.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!call || !call.joined) return;
    if (call.chat.submit(call.room, elements.chatInput.value)) elements.chatInput.value = "";
  });
  elements.micToggle.addEventListener("click", () => toggle(elements.micToggle, "audio"));
  elements.cameraToggle.addEventListener("click", () => toggle(elements.cameraToggle, "video"));
  elements.leaveButton.addEventListener("click", leave);
  elements.soundButton.addEventListener("click", () => {
    for (const video of elements.tiles.querySelectorAll("video")) video.play().catch(() => {});
    elements.soundButton.hidden = true;
  });
  window.addEventListener("hashchange", () => {
    if (!call) elements.roomInput.value = decodeURIComponent(location.hash.slice(1));
  });
  window.addEventListener("pagehide", () => leave());

  window.videochat = Object.freeze({
    state: async () => (call ? call.snapshot() : { signaling: "idle", joined: false, peers: {}, chat: [] }),
    logs: () => (window.videochatConsole ? window.videochatConsole() : []),
  });

  if (settings.autojoin) {
    const name = settings.name || guestName();
    const problem = validate(settings.room, name);
    if (problem) elements.joinError.textContent = problem;
    else join(settings.room, name);
  }
}

init();

import { initials, roomCount } from "./names.js";

// Everything that touches the DOM. Text from the network is only ever set
// with textContent, never parsed as HTML.

const $ = (id) => document.getElementById(id);

export const elements = {
  joinPanel: $("join-panel"),
  joinForm: $("join-form"),
  joinError: $("join-error"),
  roomInput: $("room-input"),
  nameInput: $("name-input"),
  joinButton: $("join-button"),
  call: $("call"),
  tiles: $("tiles"),
  chat: $("chat"),
  chatList: $("chat-list"),
  chatForm: $("chat-form"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  micToggle: $("mic-toggle"),
  cameraToggle: $("camera-toggle"),
  soundButton: $("sound-button"),
  leaveButton: $("leave-button"),
  roomLabel: $("room-label"),
  peerCount: $("peer-count"),
  status: $("connection-status"),
  quality: $("quality"),
  qualityText: $("quality-text"),
  banners: $("banners"),
};

// Banners by topic ("server", "media", "adapt"...): one line each.
const banners = new Map();

export function setBanner(topic, text, kind = "error") {
  if (!text) banners.delete(topic);
  else banners.set(topic, { text, kind });
  elements.banners.replaceChildren(
    ...[...banners.entries()].map(([key, b]) => {
      const div = document.createElement("div");
      div.className = "banner";
      div.dataset.kind = b.kind;
      div.dataset.topic = key;
      div.textContent = b.text;
      return div;
    }),
  );
}

export function setStatus(state, text) {
  elements.status.dataset.state = state;
  elements.status.textContent = text;
}

export function setQuality(summary, { inCall = false } = {}) {
  if (!summary) {
    elements.quality.dataset.level = "unknown";
    elements.qualityText.textContent = inCall ? "No peer connected" : "No call";
    return;
  }
  elements.quality.dataset.level = summary.level;
  elements.qualityText.textContent =
    `${summary.level} · ${summary.rtt_ms} ms · ${(summary.loss * 100).toFixed(1)}% loss · ${summary.send_kbps} kbps`;
}

// How many are in the call, this page included.
export function setPeerCount(n) {
  elements.peerCount.textContent = n > 0 ? roomCount(n) : "";
}

export function showCall(room) {
  elements.joinPanel.hidden = true;
  elements.call.hidden = false;
  elements.chat.hidden = false;
  elements.roomLabel.textContent = "Room: " + room;
}

export function showJoin() {
  elements.joinPanel.hidden = false;
  elements.call.hidden = true;
  elements.chat.hidden = true;
  elements.roomLabel.textContent = "";
  elements.peerCount.textContent = "";
  elements.tiles.replaceChildren();
  elements.chatList.replaceChildren();
  setChatEnabled(false);
  setQuality(null);
}

export function setChatEnabled(enabled) {
  elements.chatInput.disabled = !enabled;
  elements.chatSend.disabled = !enabled;
}


const STATE_TEXT = {
  new: "connecting…",
  connecting: "connecting…",
  connected: "",
  disconnected: "reconnecting…",
  failed: "connection failed",
  closed: "closed",
};

export class Tile {
  constructor({ id, name, local }) {
    this.root = document.createElement("figure");
    this.root.className = "tile" + (local ? " local" : "");
    this.local = Boolean(local);
    this.root.dataset.peer = id;
    this.video = document.createElement("video");
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.muted = Boolean(local); // never play our own microphone back
    this.avatar = document.createElement("div");
    this.avatar.className = "avatar";
    this.avatar.setAttribute("aria-hidden", "true");
    this.label = document.createElement("figcaption");
    this.label.className = "label";
    this.badge = document.createElement("span");
    this.badge.className = "badge";
    this.quality = document.createElement("span");
    this.quality.className = "tile-quality";
    this.root.append(this.video, this.avatar, this.label, this.badge, this.quality);
    this.setName(name);
    elements.tiles.append(this.root);
  }

  setName(name) {
    this.label.textContent = this.local ? `${name} (you)` : name;
    this.avatar.textContent = initials(name);
    this.video.setAttribute("aria-label", "Video of " + name);
  }

  setStream(stream, { onBlocked } = {}) {
    if (this.video.srcObject !== stream) this.video.srcObject = stream;
    this.setVideoShown(stream.getVideoTracks().length > 0);
    const playing = this.video.play();
    if (playing && onBlocked) {
      playing.catch((err) => {
        if (err && err.name === "NotAllowedError") onBlocked(this);
      });
    }
  }

  setVideoShown(shown) {
    this.root.classList.toggle("no-video", !shown);
  }

  setState(state) {
    this.root.dataset.state = state;
    this.badge.textContent = STATE_TEXT[state] !== undefined ? STATE_TEXT[state] : state;
  }

  setAway(text) {
    this.root.dataset.state = "away";
    this.badge.textContent = text;
  }

  setBadge(text) {
    this.badge.textContent = text;
  }

  setQuality(sample, level) {
    if (!sample) {
      this.quality.textContent = "";
      return;
    }
    this.quality.dataset.level = level;
    const rtt = sample.rttMs === null ? "–" : Math.round(sample.rttMs) + " ms";
    const loss = sample.loss === null ? "–" : `${(sample.loss * 100).toFixed(1)}%`;
    this.quality.textContent = `${rtt} · ${loss} · ${Math.round(sample.recvKbps)} kbps · ${sample.route}`;
    this.quality.title = `Round trip, packet loss, received bitrate; ${sample.route === "relay" ? "through the TURN relay" : "direct connection"}`;
  }

  remove() {
    this.video.srcObject = null;
    this.root.remove();
  }
}

const DELIVERY_TEXT = {
  sending: "sending…",
  resending: "resending…",
  failed: "not sent",
  received: "",
};

function formatTime(ts) {
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function signature(item) {
  return `${item.state}|${item.seq}|${item.error || ""}`;
}

// Updates the chat list: entries that did not change stay as they are (so
// screen readers announce only what is new), new ones are appended; keeps
// the view at the bottom when it was there.
export function renderChat(items, { onRetry }) {
  const list = elements.chatList;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const render = (item) => renderChatItem(item, onRetry);
  const existing = [...list.children];
  const appendOnly = existing.length <= items.length && existing.every((li, i) => li.dataset.key === items[i].key);
  if (!appendOnly) {
    list.replaceChildren(...items.map(render));
  } else {
    items.forEach((item, i) => {
      const li = existing[i];
      if (!li) list.append(render(item));
      else if (li.dataset.sig !== signature(item)) li.replaceWith(render(item));
    });
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function renderChatItem(item, onRetry) {
  const li = document.createElement("li");
  li.dataset.key = item.key;
  li.dataset.sig = signature(item);
  li.className = "chat-item" + (item.own ? " own" : "");
  li.dataset.state = item.state;
  if (item.seq) li.dataset.seq = String(item.seq);
  li.dataset.id = item.id || "";
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = item.own ? "You" : item.name;
  const when = document.createElement("time");
  when.textContent = formatTime(item.ts);
  if (item.ts) when.dateTime = item.ts;
  const delivery = document.createElement("span");
  delivery.className = "delivery";
  delivery.textContent =
    item.state === "acked" ? `✓ #${item.seq}` : DELIVERY_TEXT[item.state] || "";
  if (item.state === "acked") delivery.title = "Stored by the server as message " + item.seq;
  if (item.error) delivery.title = item.error;
  meta.append(who, when, delivery);
  if (item.state === "failed") {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => onRetry(item.id));
    meta.append(retry);
  }
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = item.body;
  li.append(meta, body);
  return li;
}

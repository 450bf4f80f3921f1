// Chat with delivery state. Outgoing messages go sending → acked (with the
// room's seq) or, when the server cannot make them durable now, resending →
// failed; every resend reuses the message id, so the server stores it once.
// Incoming messages are kept by seq, so replays after a reconnect never show
// twice, and a gap in seq is filled from `history`.

const ACK_TIMEOUT_MS = 10000;
const MAX_ATTEMPTS = 6;
const HISTORY_PAGE = 100;
const KEEP_PER_ROOM = 1000;
export const MAX_BODY_CHARS = 2000;

export function newMessageId() {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes);
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Chat extends EventTarget {
  constructor({ send }) {
    super();
    this.send = send; // returns false when the socket is down
    this.rooms = new Map();
    this.outgoing = new Map();
    this.selfId = "";
  }

  room(name) {
    let room = this.rooms.get(name);
    if (!room) {
      room = { lastSeq: 0, serverLastSeq: 0, messages: new Map(), historyPending: false };
      this.rooms.set(name, room);
    }
    return room;
  }

  lastSeq(name) {
    return this.room(name).lastSeq;
  }

  changed(room) {
    this.dispatchEvent(new CustomEvent("change", { detail: { room } }));
  }

  submit(roomName, text) {
    const body = String(text).trim().slice(0, MAX_BODY_CHARS);
    if (!body) return null;
    const entry = {
      id: newMessageId(),
      room: roomName,
      body,
      state: "sending",
      seq: null,
      attempts: 0,
      timer: null,
      error: null,
      ts: new Date().toISOString(),
    };
    this.outgoing.set(entry.id, entry);
    this.transmit(entry);
    this.changed(roomName);
    return entry;
  }

  transmit(entry) {
    clearTimeout(entry.timer);
    entry.attempts += 1;
    const sent = this.send({ type: "chat", room: entry.room, id: entry.id, body: entry.body });
    if (!sent) {
      // Waits for the reconnect, which resends.
      entry.state = entry.attempts > 1 ? "resending" : "sending";
      entry.attempts -= 1;
      return;
    }
    entry.timer = setTimeout(() => this.retryLater(entry, "no acknowledgement from the server"), ACK_TIMEOUT_MS);
  }

  retryLater(entry, reason) {
    clearTimeout(entry.timer);
    if (entry.state === "acked") return;
    entry.error = reason;
    if (entry.attempts >= MAX_ATTEMPTS) {
      entry.state = "failed";
      console.warn("chat: giving up on", entry.id, "after", entry.attempts, "attempts:", reason);
      this.changed(entry.room);
      return;
    }
    entry.state = "resending";
    const delay = Math.min(8000, 500 * 2 ** (entry.attempts - 1)) * (0.75 + Math.random() * 0.5);
    entry.timer = setTimeout(() => this.transmit(entry), delay);
    this.changed(entry.room);
  }

  // The user asked to try a failed message again.
  retry(id) {
    const entry = this.outgoing.get(id);
    if (!entry || entry.state === "acked") return;
    entry.attempts = 0;
    entry.state = "sending";
    this.transmit(entry);
    this.changed(entry.room);
  }

  markAcked(entry, seq) {
    clearTimeout(entry.timer);
    entry.state = "acked";
    entry.seq = seq;
    entry.error = null;
    this.changed(entry.room);
  }

  onAck(message) {
    const entry = this.outgoing.get(message.id);
    if (!entry) return;
    this.markAcked(entry, message.seq);
  }

  // An error that refers to one of our messages; returns true when handled.
  onError(message) {
    const entry = message.ref ? this.outgoing.get(message.ref) : null;
    if (!entry || entry.state === "acked") return false;
    // Worth another try: the server is busy or briefly without its store, or
    // (not_in_room) our session is still being restored after a resume.
    const retryable = ["unavailable", "rate_limited", "internal", "not_in_room"];
    if (retryable.includes(message.code)) {
      this.retryLater(entry, message.message || message.code);
    } else {
      clearTimeout(entry.timer);
      entry.state = "failed";
      entry.error = message.message || message.code;
      this.changed(entry.room);
    }
    return true;
  }

  onChat(message, { fromHistory = false } = {}) {
    if (!Number.isInteger(message.seq) || message.seq < 1 || typeof message.room !== "string") {
      console.warn("chat: message without a valid seq or room", message);
      return;
    }
    const room = this.room(message.room);
    if (message.seq <= room.lastSeq || room.messages.has(message.seq)) return; // seen
    room.messages.set(message.seq, message);
    const own = this.outgoing.get(message.id);
    if (own && own.room === message.room && own.state !== "acked") this.markAcked(own, message.seq);
    while (room.messages.has(room.lastSeq + 1)) room.lastSeq += 1;
    if (!fromHistory && message.seq > room.lastSeq + 1) this.fillGap(message.room);
    this.trim(room);
    this.changed(message.room);
  }

  trim(room) {
    if (room.messages.size <= KEEP_PER_ROOM) return;
    const seqs = [...room.messages.keys()].sort((a, b) => a - b);
    for (const seq of seqs.slice(0, seqs.length - KEEP_PER_ROOM)) room.messages.delete(seq);
  }

  fillGap(roomName) {
    const room = this.room(roomName);
    if (room.historyPending) return;
    if (this.send({ type: "history", room: roomName, after: room.lastSeq, limit: HISTORY_PAGE })) {
      room.historyPending = true;
    }
  }

  onHistory(message) {
    if (typeof message.room !== "string" || !Array.isArray(message.messages)) return;
    const room = this.room(message.room);
    room.historyPending = false;
    for (const m of message.messages) this.onChat({ room: message.room, ...m }, { fromHistory: true });
    const more = message.messages.length >= HISTORY_PAGE;
    const gap = [...room.messages.keys()].some((seq) => seq > room.lastSeq);
    if (more || gap || room.lastSeq < room.serverLastSeq) {
      if (message.messages.length > 0) this.fillGap(message.room);
    }
  }

  // After `joined`: the server replays what is newer than our last_seq; check
  // a moment later that nothing is missing (the replay may be capped).
  onJoined(roomName, serverLastSeq) {
    const room = this.room(roomName);
    room.serverLastSeq = Math.max(room.serverLastSeq, Number(serverLastSeq) || 0);
    room.historyPending = false;
    setTimeout(() => {
      if (room.lastSeq < room.serverLastSeq) this.fillGap(roomName);
    }, 1500);
  }

  // After a reconnect: everything not yet acked goes again, with the same id;
  // missed messages are fetched (a rejoin gets them replayed instead).
  onReconnected(roomNames, { fetchMissed = true } = {}) {
    for (const name of roomNames) {
      const room = this.room(name);
      room.historyPending = false;
      if (fetchMissed) this.fillGap(name);
    }
    for (const entry of this.outgoing.values()) {
      if (entry.state === "acked" || !roomNames.includes(entry.room)) continue;
      entry.attempts = 0;
      entry.state = "resending";
      this.transmit(entry);
      this.changed(entry.room);
    }
  }

  // Messages of a room in display order: delivered ones by seq, then our own
  // that have no seq yet. Each entry: { key, seq, from, name, body, ts, own, state, error, id }.
  view(roomName) {
    const room = this.room(roomName);
    const items = [...room.messages.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((m) => {
        const own = m.from === this.selfId || this.outgoing.has(m.id);
        return {
          // Own messages keep their key from "sending" to delivered, so the
          // list updates that entry in place.
          key: own ? "o" + m.id : "s" + m.seq,
          seq: m.seq,
          id: m.id,
          from: m.from,
          name: m.name || m.from,
          body: m.body,
          ts: m.ts,
          own,
          state: own ? "acked" : "received",
          error: null,
        };
      });
    const shown = new Set(items.map((i) => i.id));
    for (const entry of this.outgoing.values()) {
      if (entry.room !== roomName || shown.has(entry.id)) continue;
      items.push({
        key: "o" + entry.id,
        seq: entry.seq,
        id: entry.id,
        from: this.selfId,
        name: "You",
        body: entry.body,
        ts: entry.ts,
        own: true,
        state: entry.state,
        error: entry.error,
      });
    }
    return items;
  }
}

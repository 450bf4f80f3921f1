// The WebSocket side of the protocol (docs/protocol.md): hello/welcome,
// resume after a dropped socket, reconnect with backoff, keep-alive and drain.
// Everything else is handed to listeners as "message" events.

const CONNECT_TIMEOUT_MS = 10000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
// Messages sent while the socket is down that are worth keeping until the
// session is resumed (a lost offer would leave a peer connection stuck).
const OUTBOX_LIMIT = 200;

export class SignalingClient extends EventTarget {
  // `lastSeqs`, when given, returns the last chat seq seen per room
  // ({ room: seq }); a resume sends it so the server replays only newer chat.
  constructor({ url, token, lastSeqs }) {
    super();
    this.url = url;
    this.token = token || null;
    this.lastSeqs = lastSeqs || null;
    this.ws = null;
    this.session = null;
    this.peer = null;
    this.resumeToken = null;
    this.iceServers = [];
    this.state = "idle";
    this.attempt = 0;
    this.stopped = false;
    this.welcomed = false;
    this.reconnectNow = false;
    this.outbox = [];
    this.timers = { reconnect: null, heartbeat: null, connect: null, drain: null };
    this.lastReceived = 0;
    this.heartbeatMs = 15000;
  }

  get connected() {
    return this.welcomed && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    this.clearTimers();
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, "bye");
      this.ws = null;
    }
    this.welcomed = false;
    this.setState("closed");
  }

  // Sends now when the session is live; returns false otherwise.
  send(message) {
    if (!this.connected) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  // Sends now, or keeps the message until the same session is resumed.
  sendOrQueue(message) {
    if (this.send(message)) return;
    this.outbox.push(message);
    if (this.outbox.length > OUTBOX_LIMIT) this.outbox.shift();
  }

  setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, ...detail } }));
  }

  clearTimers() {
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      clearInterval(this.timers[key]);
      this.timers[key] = null;
    }
  }

  open() {
    this.clearTimers();
    this.welcomed = false;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error("signaling: bad server address", this.url, err);
      this.stopped = true;
      this.setState("failed", { reason: `Bad signaling server address ${this.url}.` });
      return;
    }
    this.ws = ws;
    this.timers.connect = setTimeout(() => {
      console.warn("signaling: no welcome within", CONNECT_TIMEOUT_MS, "ms");
      ws.close();
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      const hello = { type: "hello" };
      if (this.token) hello.token = this.token;
      if (this.session && this.resumeToken) {
        hello.resume = { session: this.session, token: this.resumeToken };
        const seen = this.lastSeqs ? this.lastSeqs() : null;
        if (seen && Object.keys(seen).length > 0) hello.resume.last_seq = seen;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => this.onFrame(ws, event.data);
    ws.onclose = (event) => this.onClose(ws, event);
    ws.onerror = () => {
      // The close event that follows carries what there is to know.
    };
  }

  onFrame(ws, data) {
    if (ws !== this.ws) return;
    this.lastReceived = Date.now();
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.error("signaling: frame is not JSON", String(data).slice(0, 200));
      return;
    }
    if (!message || typeof message.type !== "string") {
      console.error("signaling: frame without a type", String(data).slice(0, 200));
      return;
    }
    switch (message.type) {
      case "welcome":
        this.onWelcome(message);
        return;
      case "pong":
        return;
      case "draining":
        this.onDraining(message);
        return;
      case "error":
        if (!this.welcomed) this.onHelloError(message);
        break;
      default:
        break;
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  onWelcome(message) {
    clearTimeout(this.timers.connect);
    const previousPeer = this.peer;
    const previousSession = this.session;
    this.session = message.session;
    this.peer = message.peer;
    this.resumeToken = message.resume_token;
    this.iceServers = Array.isArray(message.ice_servers) ? message.ice_servers : [];
    this.heartbeatMs = Number(message.heartbeat_ms) > 0 ? Number(message.heartbeat_ms) : 15000;
    this.welcomed = true;
    this.attempt = 0;
    const resumed = Boolean(message.resumed) && previousSession === message.session;
    if (!resumed) this.outbox = [];
    this.startHeartbeat();
    this.setState("open", { resumed });
    this.dispatchEvent(
      new CustomEvent("welcome", { detail: { ...message, resumed, previousPeer } }),
    );
    // Queued messages go out after listeners have re-established their state.
    const queued = this.outbox.splice(0);
    for (const m of queued) this.send(m);
  }

  onHelloError(message) {
    if (message.code === "unauthorized") {
      this.stopped = true;
      this.setState("failed", {
        reason: "The server refused this room token: " + (message.message || "unauthorized") + ".",
      });
      return;
    }
    if (this.session) {
      // The session could not be resumed; start a fresh one.
      console.warn("signaling: resume refused, starting a new session", message.code);
      this.session = null;
      this.resumeToken = null;
      this.outbox = [];
      this.ws.close();
    }
  }

  onDraining(message) {
    const after = Math.max(0, Math.min(Number(message.reconnect_after_ms) || 0, 60000));
    console.info("signaling: server is draining, resuming in", after, "ms");
    this.setState("draining", { after });
    clearTimeout(this.timers.drain);
    this.timers.drain = setTimeout(() => {
      this.reconnectNow = true;
      if (this.ws) this.ws.close(1000, "draining");
    }, after);
  }

  startHeartbeat() {
    clearInterval(this.timers.heartbeat);
    this.lastReceived = Date.now();
    this.timers.heartbeat = setInterval(() => {
      if (Date.now() - this.lastReceived > this.heartbeatMs * 2.5) {
        console.warn("signaling: server silent, reconnecting");
        if (this.ws) this.ws.close();
        return;
      }
      this.send({ type: "ping" });
    }, this.heartbeatMs);
  }

  onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    const wasWelcomed = this.welcomed;
    this.welcomed = false;
    this.clearTimers();
    if (this.stopped) {
      if (this.state !== "failed") this.setState("closed");
      return;
    }
    if (event.code === 1008) {
      this.stopped = true;
      this.setState("failed", { reason: "The server refused the connection (policy)." });
      return;
    }
    // A drain or a dropped socket after a working session reconnects at once;
    // repeated failures back off.
    const delay = this.reconnectNow
      ? 0
      : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.reconnectNow = false;
    this.attempt += 1;
    console.warn("signaling: socket closed", event.code, event.reason, "retrying in", Math.round(delay), "ms");
    this.setState("reconnecting", { attempt: this.attempt, delay, wasWelcomed });
    this.timers.reconnect = setTimeout(() => this.open(), delay);
  }
}

// The WebSocket URL of the signaling server that served this page, unless
// the page was opened with ?server=ws://host:port/ws.
export function defaultServerUrl(params) {
  const explicit = params.get("server");
  if (explicit) return explicit;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

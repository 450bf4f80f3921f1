//! videochat-signaling: WebSocket signaling and REST service.

//! videochat-turn: TURN relay.

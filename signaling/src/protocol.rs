//! The wire contract of `/ws` (see docs/protocol.md): decoding of client
//! messages with the error code each failure maps to, and the server messages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest room id, peer name, chat id or session id accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Error codes of the contract's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    TooLarge,
    RateLimited,
    Unauthorized,
    NotInRoom,
    UnknownPeer,
    RoomFull,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        Self::BadRequest,
        Self::UnknownType,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unauthorized,
        Self::NotInRoom,
        Self::UnknownPeer,
        Self::RoomFull,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::NotInRoom => "not_in_room",
            Self::UnknownPeer => "unknown_peer",
            Self::RoomFull => "room_full",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// A decoding or handling failure, answered with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The client message id, or its type, so the client can match the error.
    pub reference: Option<String>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    pub session: String,
    pub token: String,
    /// Extension: the client's last seen chat `seq` per room; replay of a
    /// room starts after the larger of this and the saved position.
    #[serde(default)]
    pub last_seq: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct StatsData {
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
    pub bitrate_kbps: Option<f64>,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    Hello {
        token: Option<String>,
        resume: Option<ResumeRequest>,
    },
    Join {
        room: String,
        name: Option<String>,
        last_seq: Option<u64>,
    },
    Leave {
        room: String,
    },
    Signal {
        room: String,
        to: String,
        data: Value,
    },
    Chat {
        room: String,
        id: String,
        body: String,
    },
    History {
        room: String,
        #[serde(default)]
        after: u64,
        limit: Option<u32>,
    },
    Stats {
        room: String,
        #[serde(default)]
        data: StatsData,
    },
    Ping,
    /// Ends the session now (others see `peer-left` at once); an extension.
    Bye,
}

/// Every `type` a client may send.
pub const CLIENT_TYPES: [&str; 10] = [
    "hello", "join", "leave", "signal", "chat", "history", "stats", "ping", "bye", "pong",
];

/// What a decoded frame asks for. A client `pong` (answer to nothing) is accepted and ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Message(ClientMessage),
    Ignore,
}

/// Decodes one text frame. Never panics; every failure carries its error code.
pub fn decode(text: &str) -> Result<Decoded, ProtocolError> {
    // Fast path: a well-formed message parses straight into its variant.
    // Anything else takes the slow path, which names the exact problem.
    if let Ok(message) = serde_json::from_str::<ClientMessage>(text)
        && validate(&message).is_ok()
    {
        return Ok(Decoded::Message(message));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(ErrorCode::BadRequest, format!("not valid JSON: {e}"), None)
    })?;
    let Value::Object(map) = &value else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "a message must be a JSON object",
            None,
        ));
    };
    let reference = map
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| s.len() <= MAX_NAME_LEN)
        .map(str::to_owned);
    let Some(kind) = map.get("type") else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "field `type` is missing",
            reference,
        ));
    };
    let Some(kind) = kind.as_str() else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "field `type` must be a string",
            reference,
        ));
    };
    let reference = reference.or_else(|| Some(truncate(kind, MAX_NAME_LEN).to_owned()));
    if !CLIENT_TYPES.contains(&kind) {
        return Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{}`", truncate(kind, MAX_NAME_LEN)),
            reference,
        ));
    }
    if kind == "pong" {
        return Ok(Decoded::Ignore);
    }
    let message: ClientMessage = serde_json::from_value(value)
        .map_err(|e| ProtocolError::new(ErrorCode::BadRequest, e.to_string(), reference.clone()))?;
    validate(&message).map_err(|m| ProtocolError::new(ErrorCode::BadRequest, m, reference))?;
    Ok(Decoded::Message(message))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The size of `s` once escaped as a JSON string (without the quotes): what
/// it costs to store and send, which for control characters is six times
/// its length in UTF-8.
pub fn json_escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// A chat body's size check, counted as sent (JSON-escaped).
pub fn check_chat_body(body: &str, max_bytes: usize) -> Result<(), String> {
    let size = json_escaped_len(body);
    if size > max_bytes {
        return Err(format!(
            "chat body is {size} bytes as JSON, over the limit of {max_bytes}"
        ));
    }
    Ok(())
}

/// A room id, peer id, chat id or display name: 1..=64 characters, no control characters.
pub fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("field `{field}` must not be empty"));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "field `{field}` is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("field `{field}` contains control characters"));
    }
    Ok(())
}

fn validate(message: &ClientMessage) -> Result<(), String> {
    match message {
        ClientMessage::Join { room, name, .. } => {
            check_name("room", room)?;
            if let Some(name) = name {
                check_name("name", name)?;
            }
        }
        ClientMessage::Leave { room } | ClientMessage::Stats { room, .. } => {
            check_name("room", room)?
        }
        ClientMessage::History { room, .. } => check_name("room", room)?,
        ClientMessage::Signal { room, to, .. } => {
            check_name("room", room)?;
            check_name("to", to)?;
        }
        ClientMessage::Chat { room, id, .. } => {
            check_name("room", room)?;
            check_name("id", id)?;
        }
        ClientMessage::Hello { resume, .. } => {
            if let Some(r) = resume {
                check_name("resume.session", &r.session)?;
                for room in r.last_seq.iter().flat_map(|m| m.keys()) {
                    check_name("resume.last_seq room", room)?;
                }
            }
        }
        ClientMessage::Ping | ClientMessage::Bye => {}
    }
    Ok(())
}

/// A stored chat message, as sent to clients and returned by `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub name: String,
    pub body: String,
    pub ts: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer: String,
    pub name: String,
}

/// Messages the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage<'a> {
    Welcome {
        session: &'a str,
        peer: &'a str,
        resume_token: &'a str,
        resumed: bool,
        ice_servers: &'a [IceServer],
        heartbeat_ms: u64,
    },
    Joined {
        room: &'a str,
        peers: &'a [PeerInfo],
        last_seq: u64,
    },
    Left {
        room: &'a str,
    },
    PeerJoined {
        room: &'a str,
        peer: &'a str,
        name: &'a str,
    },
    PeerLeft {
        room: &'a str,
        peer: &'a str,
    },
    /// A peer's socket dropped; its place is kept for `resume_within_ms`
    /// (extension). `peer-joined` follows when it resumes, `peer-left` when
    /// the window ends without a resume.
    PeerAway {
        room: &'a str,
        peer: &'a str,
        resume_within_ms: u64,
    },
    Signal {
        room: &'a str,
        from: &'a str,
        data: &'a Value,
    },
    Chat(&'a ChatMessage),
    Ack {
        id: &'a str,
        seq: u64,
    },
    History {
        room: &'a str,
        messages: &'a [ChatMessage],
    },
    Adapt {
        room: &'a str,
        max_bitrate_kbps: u32,
        audio_only: bool,
    },
    Pong,
    Draining {
        reconnect_after_ms: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerMessage<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::PeerJoined { .. } => "peer-joined",
            Self::PeerLeft { .. } => "peer-left",
            Self::PeerAway { .. } => "peer-away",
            Self::Signal { .. } => "signal",
            Self::Chat(_) => "chat",
            Self::Ack { .. } => "ack",
            Self::History { .. } => "history",
            Self::Adapt { .. } => "adapt",
            Self::Pong => "pong",
            Self::Draining { .. } => "draining",
            Self::Error { .. } => "error",
        }
    }

    /// Serializes the message; our own types always serialize.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
        })
    }
}

pub fn error_json(err: &ProtocolError) -> String {
    ServerMessage::Error {
        code: err.code,
        message: &err.message,
        reference: err.reference.as_deref(),
    }
    .to_json()
}

/// The bitrate and audio-only advice for reported receive quality.
pub fn adapt_for(stats: &StatsData) -> (u32, bool) {
    let loss = stats
        .loss
        .filter(|l| l.is_finite())
        .unwrap_or(0.0)
        .clamp(0.0, 1.0);
    let rtt = stats
        .rtt_ms
        .filter(|r| r.is_finite())
        .unwrap_or(0.0)
        .max(0.0);
    let current = stats
        .bitrate_kbps
        .filter(|b| b.is_finite() && *b > 0.0)
        .unwrap_or(1500.0)
        .min(4000.0);
    // Back off multiplicatively on loss or long round trips, grow slowly when clean
    // (GCC-like), and give up video when even a low bitrate loses a lot.
    let target = if loss > 0.10 {
        current * (1.0 - 0.5 * loss)
    } else if loss > 0.02 || rtt > 400.0 {
        current * 0.85
    } else {
        current * 1.08
    };
    let target = target.clamp(30.0, 2500.0);
    let audio_only = loss >= 0.25 || target < 150.0 || rtt > 1500.0;
    (target.round() as u32, audio_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_length_matches_serde_json() {
        for body in ["plain", "quote \" and \\", "\u{1}\u{2}\n\t", "héllo ✓", ""] {
            let escaped = serde_json::to_string(body).unwrap().len() - 2;
            assert_eq!(json_escaped_len(body), escaped, "{body:?}");
        }
        let controls = "\u{1}".repeat(8 * 1024);
        let e = check_chat_body(&controls, 8 * 1024).unwrap_err();
        assert!(e.contains("49152 bytes"), "{e}");
        assert!(check_chat_body(&"x".repeat(8 * 1024), 8 * 1024).is_ok());
    }

    #[test]
    fn decodes_resume_last_seq_and_rejects_bad_values() {
        let m = decode(
            r#"{"type":"hello","resume":{"session":"s-1","token":"t","last_seq":{"r1":42}}}"#,
        )
        .unwrap();
        let Decoded::Message(ClientMessage::Hello {
            resume: Some(r), ..
        }) = m
        else {
            panic!("{m:?}");
        };
        assert_eq!(r.last_seq, Some([("r1".to_owned(), 42)].into()));
        let old = decode(r#"{"type":"hello","resume":{"session":"s-1","token":"t"}}"#).unwrap();
        assert!(matches!(
            old,
            Decoded::Message(ClientMessage::Hello {
                resume: Some(ResumeRequest { last_seq: None, .. }),
                ..
            })
        ));
        for bad in [r#"{"r1":-1}"#, r#"{"r1":"1"}"#, r#"{"":1}"#, "[1]", "7"] {
            let text = format!(
                r#"{{"type":"hello","resume":{{"session":"s-1","token":"t","last_seq":{bad}}}}}"#
            );
            assert_eq!(
                decode(&text).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn decodes_chat_and_rejects_bad_shapes() {
        let m = decode(r#"{"type":"chat","room":"r1","id":"c-1","body":"hi"}"#).unwrap();
        assert_eq!(
            m,
            Decoded::Message(ClientMessage::Chat {
                room: "r1".into(),
                id: "c-1".into(),
                body: "hi".into()
            })
        );
        assert_eq!(decode("nope").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(decode("[1]").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            decode(r#"{"room":"x"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let e = decode(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.reference.as_deref(), Some("dance"));
        let e = decode(r#"{"type":"chat","room":"r1","id":"c-9"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.reference.as_deref(), Some("c-9"));
        assert_eq!(
            decode(r#"{"type":"join","room":""}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(decode(r#"{"type":"pong"}"#).unwrap(), Decoded::Ignore);
    }

    #[test]
    fn server_messages_carry_contract_type_names() {
        let chat = ChatMessage {
            room: "r".into(),
            seq: 3,
            id: "c".into(),
            from: "p".into(),
            name: "n".into(),
            body: "b".into(),
            ts: "t".into(),
        };
        let v: Value = serde_json::from_str(&ServerMessage::Chat(&chat).to_json()).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["seq"], 3);
        let v: Value = serde_json::from_str(
            &ServerMessage::PeerJoined {
                room: "r",
                peer: "p",
                name: "n",
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["type"], "peer-joined");
        let e = error_json(&ProtocolError::new(
            ErrorCode::RoomFull,
            "full",
            Some("r".into()),
        ));
        let v: Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["code"], "room_full");
        assert_eq!(v["ref"], "r");
    }

    #[test]
    fn adapt_backs_off_on_loss_and_drops_video_when_bad() {
        let (rate, audio_only) = adapt_for(&StatsData {
            rtt_ms: Some(120.0),
            loss: Some(0.08),
            bitrate_kbps: Some(300.0),
        });
        assert!(rate < 300, "{rate}");
        assert!(!audio_only);
        let (_, audio_only) = adapt_for(&StatsData {
            rtt_ms: Some(100.0),
            loss: Some(0.4),
            bitrate_kbps: Some(200.0),
        });
        assert!(audio_only);
        let (rate, audio_only) = adapt_for(&StatsData {
            rtt_ms: Some(20.0),
            loss: Some(0.0),
            bitrate_kbps: Some(1000.0),
        });
        assert!(rate > 1000);
        assert!(!audio_only);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON-ish text: objects with known and unknown types, wrong field types, junk.
    fn jsonish() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            ".{0,80}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            Just("{}".to_owned()),
            Just("[]".to_owned()),
        ];
        let kind = prop_oneof![
            prop::sample::select(CLIENT_TYPES.to_vec()).prop_map(|s| format!("{s:?}")),
            ".{0,20}".prop_map(|s| format!("{s:?}")),
            scalar.clone(),
        ];
        let field = prop::sample::select(vec![
            "room", "to", "id", "body", "name", "last_seq", "after", "limit", "data", "token",
            "resume", "session",
        ]);
        let scalar = prop_oneof![
            scalar,
            Just(r#"{"session":"s-1","token":"t"}"#.to_owned()),
            Just(r#"{"session":"s-1","token":"t","last_seq":{"r1":42}}"#.to_owned()),
            Just(r#"{"session":"s-1","token":"t","last_seq":{"r1":-1}}"#.to_owned()),
            Just(r#"{"session":"s-1","token":"t","last_seq":{"":1}}"#.to_owned()),
            Just(r#"{"session":"s-1","token":"t","last_seq":[1]}"#.to_owned()),
        ];
        (kind, prop::collection::vec((field, scalar), 0..6)).prop_map(|(k, fields)| {
            let mut s = format!("{{\"type\":{k}");
            for (f, v) in fields {
                s.push_str(&format!(",\"{f}\":{v}"));
            }
            s.push('}');
            s
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoder_never_panics_on_any_text(text in ".{0,300}") {
            let _ = decode(&text);
        }

        #[test]
        fn decoder_answers_every_jsonish_message_with_a_message_or_an_error(text in jsonish()) {
            match decode(&text) {
                Ok(_) => {}
                Err(e) => {
                    prop_assert!(!e.message.is_empty());
                    // the reply is valid JSON carrying the code
                    let v: Value = serde_json::from_str(&error_json(&e)).unwrap();
                    prop_assert_eq!(v["type"].as_str(), Some("error"));
                    prop_assert_eq!(v["code"].as_str(), Some(e.code.as_str()));
                }
            }
        }
    }
}

//! The redb tables of the embedded store.

use redb::TableDefinition;

pub(super) const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
pub(super) const ROOM_SEQ: TableDefinition<&str, u64> = TableDefinition::new("room_seq");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (hash of room, peer and client id, seq), for idempotent resends: a
/// resend's candidates are the entries with its hash, each checked against
/// the stored message's room, sender and id, so a collision costs one more
/// read and never merges two messages. Fixed-width keys: redb compares them
/// without decoding strings (string keys cost most of a commit's CPU).
pub(super) const CLIENT_KEYS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("client_key_hashes");
/// (unix seconds, key hash, seq): when each idempotency key was written, in
/// time order, so that expired keys are found without a scan.
pub(super) const CLIENT_KEY_TIMES: TableDefinition<(u64, u64, u64), ()> =
    TableDefinition::new("client_key_times");
/// Idempotency keys as earlier versions stored them, by strings; moved into
/// the tables above when a store written by such a version is opened.
pub(super) const OLD_CLIENT_IDS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("client_ids");
pub(super) const OLD_CLIENT_ID_TIMES: TableDefinition<(u64, &str, &str, &str), ()> =
    TableDefinition::new("client_id_times");

static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// The idempotency key's hash as stored: stable across versions and runs.
pub(super) fn client_key_hash(room: &str, peer: &str, client_id: &str) -> u64 {
    let mut digest = CRC64.digest();
    for part in [room, peer, client_id] {
        // Lengths first, so no choice of strings makes two keys equal.
        digest.update(&(part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize()
}
/// session id → encoded session state, so sessions (and with them the
/// idempotency of resends) survive a restart.
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

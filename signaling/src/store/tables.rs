//! The redb tables of the embedded store.

use redb::TableDefinition;

pub(super) const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
pub(super) const ROOM_SEQ: TableDefinition<&str, u64> = TableDefinition::new("room_seq");
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (room, peer, client id) → seq, for idempotent resends.
pub(super) const CLIENT_IDS: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("client_ids");
/// (unix seconds, room, peer, client id): when each idempotency key was
/// written, in time order, so that expired keys are found without a scan.
pub(super) const CLIENT_ID_TIMES: TableDefinition<(u64, &str, &str, &str), ()> =
    TableDefinition::new("client_id_times");
/// session id → encoded session state, so sessions (and with them the
/// idempotency of resends) survive a restart.
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

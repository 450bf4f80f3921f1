//! One chat message in the log, as bytes, and the scan that reads a segment
//! back after a restart.
//!
//! A record is a 12-byte header and a payload, little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `VCL1` |
//! | 4 | payload length |
//! | 4 | CRC-32C over the segment id (8 bytes), the length and the payload |
//! | 8 | payload: unix seconds the record was written (idempotency expiry) |
//! | 8 | payload: the record's number in the log, one more than the last's |
//! | n | payload: the message as JSON, exactly as the store keeps it |
//!
//! The checksum covers the segment id, so a record left over from a file's
//! earlier life (or copied from another segment) never passes as part of this
//! one. Segments are zero-filled before use: a zero header is the clean end
//! of what was written; anything else that does not check out is a torn or
//! corrupt record, and the scan stops there. The record number lets a replay
//! see a hole that spans segments (a lost page before a segment's end).

use crate::protocol::ChatMessage;

pub(super) const HEADER_BYTES: usize = 12;
const MAGIC: [u8; 4] = *b"VCL1";
/// Payload bytes before the message's JSON: written-at and record number.
const PREFIX_BYTES: usize = 16;
/// Longest payload a scan accepts; a chat message is far smaller (its body is
/// capped by `--max-chat-bytes`), so a longer length is a corrupt header.
pub(super) const MAX_PAYLOAD: usize = 1 << 20;

static CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Appends an unsealed record for `message` to `out`: the checksum is filled
/// in by [`seal`] once the record's segment is known.
pub(super) fn encode(written_at: u64, number: u64, message: &ChatMessage, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(&written_at.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    // Serializing a struct of strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, message);
}

/// Fills in the header of a record made by [`encode`] for `segment`.
pub(super) fn seal(segment: u64, record: &mut [u8]) {
    let len = (record.len() - HEADER_BYTES) as u32;
    let crc = checksum(segment, len, &record[HEADER_BYTES..]);
    record[0..4].copy_from_slice(&MAGIC);
    record[4..8].copy_from_slice(&len.to_le_bytes());
    record[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The JSON of the message in a sealed or unsealed record.
pub(super) fn message_json(record: &[u8]) -> &[u8] {
    &record[HEADER_BYTES + PREFIX_BYTES..]
}

fn checksum(segment: u64, len: u32, payload: &[u8]) -> u32 {
    let mut digest = CASTAGNOLI.digest();
    digest.update(&segment.to_le_bytes());
    digest.update(&len.to_le_bytes());
    digest.update(payload);
    digest.finalize()
}

/// A record read back.
#[derive(Debug)]
pub(super) struct ScannedRecord<'a> {
    pub written_at: u64,
    /// The record's number in the log.
    pub number: u64,
    pub message: ChatMessage,
    /// The message's JSON as stored.
    pub json: &'a [u8],
}

/// Why a scan stopped before the end of the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// Zeros: nothing was written past here.
    Clean,
    /// Bytes that are not a whole, valid record: a write the crash tore, or
    /// damage. Everything from `offset` on is dropped.
    Torn { offset: usize, reason: &'static str },
}

/// The valid records at the start of `bytes` (a segment's content), and
/// where and why they end.
pub(super) fn scan(segment: u64, bytes: &[u8]) -> (Vec<ScannedRecord<'_>>, ScanEnd) {
    let mut records = Vec::new();
    let mut at = 0;
    let end = loop {
        if bytes.len() - at < HEADER_BYTES {
            break if bytes[at..].iter().all(|b| *b == 0) {
                ScanEnd::Clean
            } else {
                ScanEnd::Torn {
                    offset: at,
                    reason: "a header cut short",
                }
            };
        }
        let header = &bytes[at..at + HEADER_BYTES];
        if header.iter().all(|b| *b == 0) {
            break ScanEnd::Clean;
        }
        let torn = |reason| ScanEnd::Torn { offset: at, reason };
        if header[0..4] != MAGIC {
            break torn("no record header");
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let len_usize = len as usize;
        if !(PREFIX_BYTES..=MAX_PAYLOAD).contains(&len_usize)
            || bytes.len() - at - HEADER_BYTES < len_usize
        {
            break torn("a length past the segment");
        }
        let payload = &bytes[at + HEADER_BYTES..at + HEADER_BYTES + len_usize];
        if checksum(segment, len, payload) != crc {
            break torn("a checksum that does not match");
        }
        let mut written = [0; 8];
        written.copy_from_slice(&payload[..8]);
        let mut number = [0; 8];
        number.copy_from_slice(&payload[8..16]);
        let json = &payload[PREFIX_BYTES..];
        let Ok(message) = serde_json::from_slice::<ChatMessage>(json) else {
            break torn("a message that does not decode");
        };
        records.push(ScannedRecord {
            written_at: u64::from_le_bytes(written),
            number: u64::from_le_bytes(number),
            message,
            json,
        });
        at += HEADER_BYTES + len_usize;
    };
    (records, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, body: &str) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: format!("c{seq}"),
            from: "p".into(),
            name: "n".into(),
            body: body.into(),
            ts: "t".into(),
        }
    }

    /// A segment of zeros holding `messages` from its start.
    fn segment(id: u64, messages: &[ChatMessage], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut record = Vec::new();
        for m in messages {
            encode(7, m.seq, m, &mut record);
            seal(id, &mut record);
            out.extend_from_slice(&record);
        }
        out.resize(size, 0);
        out
    }

    #[test]
    fn records_read_back_and_a_zero_tail_is_a_clean_end() {
        let messages = [message(1, "a"), message(2, "b \"quoted\" \u{1F600}")];
        let bytes = segment(3, &messages, 4096);
        let (records, end) = scan(3, &bytes);
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(records.len(), 2);
        for (record, m) in records.iter().zip(&messages) {
            assert_eq!(&record.message, m);
            assert_eq!(record.written_at, 7);
            assert_eq!(record.number, m.seq);
            assert_eq!(record.json, serde_json::to_vec(m).unwrap().as_slice());
        }
        // A segment filled to its last byte ends cleanly too.
        let full = segment(3, &messages[..1], 0);
        assert_eq!(scan(3, &full).1, ScanEnd::Clean);
    }

    #[test]
    fn a_torn_or_flipped_record_ends_the_scan_at_its_offset() {
        let messages = [message(1, "a"), message(2, "b"), message(3, "c")];
        let whole = segment(1, &messages, 4096);
        let (first, _) = scan(1, &whole);
        let second_at = HEADER_BYTES + PREFIX_BYTES + first[0].json.len();
        let third_at = second_at + HEADER_BYTES + PREFIX_BYTES + first[1].json.len();

        // The last record cut short by the crash: the rest of it is zeros.
        let mut torn = whole.clone();
        for b in &mut torn[third_at + 15..] {
            *b = 0;
        }
        let (records, end) = scan(1, &torn);
        assert_eq!(records.len(), 2);
        assert!(matches!(end, ScanEnd::Torn { offset, .. } if offset == third_at));

        // One bit flipped in the second record's body.
        let mut flipped = whole.clone();
        flipped[second_at + HEADER_BYTES + 12] ^= 0x10;
        let (records, end) = scan(1, &flipped);
        assert_eq!(records.len(), 1);
        assert_eq!(
            end,
            ScanEnd::Torn {
                offset: second_at,
                reason: "a checksum that does not match"
            }
        );

        // A header whose length runs past the segment.
        let mut long = whole.clone();
        long[second_at + 4..second_at + 8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(scan(1, &long).0.len(), 1);
    }

    #[test]
    fn records_of_another_segment_do_not_pass() {
        let bytes = segment(1, &[message(1, "a")], 1024);
        let (records, end) = scan(2, &bytes);
        assert!(records.is_empty());
        assert!(matches!(end, ScanEnd::Torn { offset: 0, .. }));
    }
}

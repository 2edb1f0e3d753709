//! Thin entry points into crate internals for the `cargo fuzz` targets in `fuzz/` and their
//! regression tests. Behind the `fuzzing` feature; not a stable API.

use bytes::Bytes;

use crate::embedded::record;
use crate::error::RecordError;
use crate::message::{MessageParts, MessageView};

/// Size of the fixed record header before the topic.
pub const HEADER_LEN: usize = record::HEADER_LEN;
/// Bytes a reader needs to learn a record's size.
pub const PREFIX_LEN: usize = record::PREFIX_LEN;
/// The first four bytes of every record.
pub const MAGIC: u32 = record::MAGIC;

/// A record the decoder accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The size the record claims (and the decoder verified).
    pub len: usize,
    /// The commit-log position the record says it was written at.
    pub position: u64,
    /// Flags (delayed, transactional).
    pub flags: u32,
    /// The decoded message, with queue id, offset, timestamps and reconsume count.
    pub message: MessageView,
}

/// The size a record claims from its first [`PREFIX_LEN`] bytes (`record::peek_len`).
pub fn peek_len(prefix: &[u8]) -> Result<usize, RecordError> {
    record::peek_len(prefix)
}

/// Verifies framing and checksum and decodes the record at the start of `buf`
/// (`record::decode`).
pub fn decode(buf: &[u8]) -> Result<Record, RecordError> {
    let len = record::verify(buf)?;
    let rec = record::decode(&Bytes::copy_from_slice(buf))?;
    Ok(Record {
        len,
        position: rec.placement.position,
        flags: rec.placement.flags,
        message: rec.message,
    })
}

/// Encodes `rec` again the way the commit log writes it; `None` when a field is too long to
/// frame.
pub fn encode(rec: &Record) -> Option<Vec<u8>> {
    let m = &rec.message;
    let parts = MessageParts {
        id: m.id,
        topic: m.topic.clone(),
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        properties: m.properties.clone(),
        body: m.body.clone(),
        born_timestamp: m.born_timestamp,
    };
    let placement = record::Placement {
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        position: rec.position,
        store_timestamp: m.store_timestamp,
        reconsume_times: m.reconsume_times,
        flags: rec.flags,
    };
    let len = record::encoded_len(&parts)?;
    let mut out = Vec::with_capacity(len);
    record::encode_into(&mut out, &parts, &placement, len);
    Some(out)
}

/// Builds the bytes of a record from raw fields, for targets that need a valid checksum to
/// reach the field decoder: `header` is bytes [12, 72) of the record, `tail` everything after.
pub fn frame(header: &[u8; HEADER_LEN - 12], tail: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + tail.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(header);
    out.extend_from_slice(tail);
    let crc = crc32c::crc32c(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

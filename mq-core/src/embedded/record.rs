//! The commit-log record: framing, encoding and CRC32C verification.
//!
//! ```text
//! 0   magic           u32   "MQR1"
//! 4   total size      u32   whole record, header included
//! 8   crc32c          u32   of bytes [12, total size)
//! 12  queue id        u32
//! 16  queue offset    u64
//! 24  commit-log pos  u64   where the record was written: a record copied elsewhere fails
//! 32  born time       u64   ms since the Unix epoch
//! 40  store time      u64   ms since the Unix epoch
//! 48  reconsume times u32
//! 52  flags           u32   reserved for delayed and transactional records
//! 56  message id      u128
//! 72  topic           u8 length + bytes
//!     tag             u16 length + bytes (0: no tag)
//!     keys            u16 count, each u16 length + bytes
//!     properties      u16 count, each u16 name length + name, u32 value length + value
//!     body            u32 length + bytes
//! ```
//! All integers are little-endian.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes};

use crate::error::RecordError;
use crate::message::{MessageId, MessageParts, MessageView};

/// The first four bytes of every record.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"MQR1");
/// Size of the fixed header before the topic.
pub(crate) const HEADER_LEN: usize = 72;
/// Offset of the total-size field; readers need the first 8 bytes to learn a record's size.
pub(crate) const PREFIX_LEN: usize = 8;

/// Where a record lives and in which queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub position: u64,
    pub store_timestamp: u64,
    pub reconsume_times: u32,
    pub flags: u32,
}

/// The encoded size of a message, or `None` when a field is too long to frame.
pub(crate) fn encoded_len(msg: &MessageParts) -> Option<usize> {
    if msg.topic.len() > u8::MAX as usize {
        return None;
    }
    let mut len = HEADER_LEN + 1 + msg.topic.len() + 2 + msg.tag.as_ref().map_or(0, String::len);
    len += 2 + msg.keys.iter().map(|k| 2 + k.len()).sum::<usize>();
    len += 2 + msg
        .properties
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum::<usize>();
    len += 4 + msg.body.len();
    u32::try_from(len).ok().map(|_| len)
}

/// Appends the record of `msg` at `placement` to `out`. `len` is [`encoded_len`] of `msg`.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    msg: &MessageParts,
    placement: &Placement,
    len: usize,
) {
    let start = out.len();
    out.reserve(len);
    out.put_u32_le(MAGIC);
    out.put_u32_le(len as u32);
    out.put_u32_le(0); // checksum, filled in below
    out.put_u32_le(placement.queue_id);
    out.put_u64_le(placement.queue_offset);
    out.put_u64_le(placement.position);
    out.put_u64_le(msg.born_timestamp);
    out.put_u64_le(placement.store_timestamp);
    out.put_u32_le(placement.reconsume_times);
    out.put_u32_le(placement.flags);
    out.put_u128_le(msg.id.as_u128());
    out.put_u8(msg.topic.len() as u8);
    out.put_slice(msg.topic.as_bytes());
    let tag = msg.tag.as_deref().unwrap_or("");
    out.put_u16_le(tag.len() as u16);
    out.put_slice(tag.as_bytes());
    out.put_u16_le(msg.keys.len() as u16);
    for key in &msg.keys {
        out.put_u16_le(key.len() as u16);
        out.put_slice(key.as_bytes());
    }
    out.put_u16_le(msg.properties.len() as u16);
    for (name, value) in &msg.properties {
        out.put_u16_le(name.len() as u16);
        out.put_slice(name.as_bytes());
        out.put_u32_le(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_u32_le(msg.body.len() as u32);
    out.put_slice(&msg.body);
    debug_assert_eq!(out.len() - start, len);
    let crc = crc32c::crc32c(&out[start + 12..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The size a record claims from its first [`PREFIX_LEN`] bytes, after checking the magic.
pub(crate) fn peek_len(prefix: &[u8]) -> Result<usize, RecordError> {
    if prefix.len() < PREFIX_LEN {
        return Err(RecordError::Truncated {
            needed: PREFIX_LEN,
            available: prefix.len(),
        });
    }
    let magic = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if magic != MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if len < HEADER_LEN {
        return Err(RecordError::Malformed("total size smaller than the header"));
    }
    Ok(len)
}

/// Checks framing and checksum of the record at the start of `buf` and returns its length.
pub(crate) fn verify(buf: &[u8]) -> Result<usize, RecordError> {
    let len = peek_len(buf)?;
    if buf.len() < len {
        return Err(RecordError::Truncated {
            needed: len,
            available: buf.len(),
        });
    }
    let stored = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let computed = crc32c::crc32c(&buf[12..len]);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(len)
}

/// A verified record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedRecord {
    pub placement: Placement,
    pub message: MessageView,
}

/// Verifies and decodes the record at the start of `buf`.
///
/// Body bytes are shared with `buf`, not copied.
pub(crate) fn decode(buf: &Bytes) -> Result<DecodedRecord, RecordError> {
    let len = verify(buf)?;
    let mut b = buf.slice(12..len);
    let queue_id = b.get_u32_le();
    let queue_offset = b.get_u64_le();
    let position = b.get_u64_le();
    let born_timestamp = b.get_u64_le();
    let store_timestamp = b.get_u64_le();
    let reconsume_times = b.get_u32_le();
    let flags = b.get_u32_le();
    let id = MessageId::from_u128(b.get_u128_le());
    let topic_len = take_len(&mut b, 1)?;
    let topic = take_str(&mut b, topic_len)?;
    let tag_len = take_len(&mut b, 2)?;
    let tag = take_str(&mut b, tag_len)?;
    let key_count = take_len(&mut b, 2)?;
    let mut keys = Vec::with_capacity(key_count.min(64));
    for _ in 0..key_count {
        let n = take_len(&mut b, 2)?;
        keys.push(take_str(&mut b, n)?);
    }
    let prop_count = take_len(&mut b, 2)?;
    let mut properties = BTreeMap::new();
    for _ in 0..prop_count {
        let n = take_len(&mut b, 2)?;
        let name = take_str(&mut b, n)?;
        let n = take_len(&mut b, 4)?;
        properties.insert(name, take_str(&mut b, n)?);
    }
    let body_len = take_len(&mut b, 4)?;
    if b.remaining() != body_len {
        return Err(RecordError::Malformed(
            "body length does not match record size",
        ));
    }
    let body = b.split_to(body_len);
    Ok(DecodedRecord {
        placement: Placement {
            queue_id,
            queue_offset,
            position,
            store_timestamp,
            reconsume_times,
            flags,
        },
        message: MessageView {
            id,
            topic,
            tag: (!tag.is_empty()).then_some(tag),
            keys,
            properties,
            body,
            queue_id,
            queue_offset,
            born_timestamp,
            store_timestamp,
            reconsume_times,
        },
    })
}

fn take_len(b: &mut Bytes, width: usize) -> Result<usize, RecordError> {
    if b.remaining() < width {
        return Err(RecordError::Malformed("field length runs past the record"));
    }
    Ok(match width {
        1 => b.get_u8() as usize,
        2 => b.get_u16_le() as usize,
        _ => b.get_u32_le() as usize,
    })
}

fn take_str(b: &mut Bytes, len: usize) -> Result<String, RecordError> {
    if b.remaining() < len {
        return Err(RecordError::Malformed("field runs past the record"));
    }
    let bytes = b.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| RecordError::Malformed("text field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use proptest::prelude::*;

    fn placement(position: u64) -> Placement {
        Placement {
            queue_id: 3,
            queue_offset: 77,
            position,
            store_timestamp: 1_700_000_000_123,
            reconsume_times: 2,
            flags: 0,
        }
    }

    fn encode(msg: &MessageParts, p: &Placement) -> Vec<u8> {
        let len = encoded_len(msg).unwrap();
        let mut out = vec![0xAA; 5]; // records are appended after other bytes
        encode_into(&mut out, msg, p, len);
        out.split_off(5)
    }

    fn arb_message() -> impl Strategy<Value = MessageParts> {
        (
            "[a-zA-Z0-9_%|-]{1,40}",
            proptest::option::of("[a-z]{1,10}"),
            proptest::collection::vec("[ -~]{1,20}", 0..4),
            proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,30}", 0..4),
            proptest::collection::vec(any::<u8>(), 0..2048),
        )
            .prop_map(|(topic, tag, keys, props, body)| {
                let mut m = Message::new(topic, body);
                if let Some(t) = tag {
                    m = m.with_tag(t);
                }
                for k in keys {
                    m = m.with_key(k);
                }
                for (k, v) in props {
                    m = m.with_property(k, v);
                }
                m.into_parts()
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(msg in arb_message(), pos in any::<u64>()) {
            let p = placement(pos);
            let bytes = Bytes::from(encode(&msg, &p));
            let rec = decode(&bytes).unwrap();
            prop_assert_eq!(rec.placement, p);
            prop_assert_eq!(rec.message.id, msg.id);
            prop_assert_eq!(&rec.message.topic, &msg.topic);
            prop_assert_eq!(&rec.message.tag, &msg.tag);
            prop_assert_eq!(&rec.message.keys, &msg.keys);
            prop_assert_eq!(&rec.message.properties, &msg.properties);
            prop_assert_eq!(&rec.message.body, &msg.body);
            prop_assert_eq!(rec.message.born_timestamp, msg.born_timestamp);
        }

        #[test]
        fn any_flipped_byte_is_detected(msg in arb_message(), idx in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut bytes = encode(&msg, &placement(4096));
            let i = idx.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(decode(&Bytes::from(bytes)).is_err());
        }

        #[test]
        fn any_truncation_is_detected(msg in arb_message(), idx in any::<prop::sample::Index>()) {
            let bytes = encode(&msg, &placement(0));
            let cut = idx.index(bytes.len());
            let err = decode(&Bytes::from(bytes[..cut].to_vec())).unwrap_err();
            let truncated = matches!(err, RecordError::Truncated { .. });
            prop_assert!(truncated, "{err:?}");
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }

    #[test]
    fn checksum_error_names_both_values() {
        let msg = Message::new("t", "body").into_parts();
        let mut bytes = encode(&msg, &placement(0));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode(&Bytes::from(bytes)),
            Err(RecordError::Checksum { .. })
        ));
    }
}

//! Target `record_decode`: arbitrary bytes into the commit-log record decoder.
//!
//! The first input byte picks the mode: even, the rest goes in as it is (framing, magic,
//! size and checksum checks); odd, the rest is framed with a correct magic, size and CRC
//! first, so the field decoder behind the checksum is reached too.

use mq_core::fuzzing::{self, HEADER_LEN, MAGIC, PREFIX_LEN};
use mq_core::RecordError;

/// Runs one input; panics on any broken property.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
        walk(rest);
    } else if rest.len() >= HEADER_LEN - 12 {
        let mut header = [0u8; HEADER_LEN - 12];
        header.copy_from_slice(&rest[..HEADER_LEN - 12]);
        let framed = fuzzing::frame(&header, &rest[HEADER_LEN - 12..]);
        check(&framed);
    }
}

/// One buffer: whatever the decoder says must be consistent with the bytes.
fn check(buf: &[u8]) {
    let peeked = fuzzing::peek_len(buf);
    match &peeked {
        Ok(len) => {
            assert!(buf.len() >= PREFIX_LEN);
            assert_eq!(
                &buf[..4],
                &MAGIC.to_le_bytes(),
                "peek_len accepted a bad magic"
            );
            assert!(
                *len >= HEADER_LEN,
                "peek_len accepted a size below the header"
            );
            assert_eq!(
                *len as u32,
                u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]])
            );
        }
        Err(RecordError::Truncated { .. }) => assert!(buf.len() < PREFIX_LEN),
        Err(_) => {}
    }
    let Ok(rec) = fuzzing::decode(buf) else {
        return;
    };
    let len = rec.len;
    assert_eq!(
        peeked.ok(),
        Some(len),
        "decode and peek_len disagree on the size"
    );
    assert!(len <= buf.len(), "decoded a record longer than the input");
    let stored = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    assert_eq!(
        stored,
        crc32c::crc32c(&buf[12..len]),
        "a record whose checksum fails was returned"
    );
    let body = &rec.message.body;
    assert!(body.len() <= len - HEADER_LEN);
    assert_eq!(
        &buf[len - body.len()..len],
        &body[..],
        "body is not the record's tail"
    );
    // Re-encoding what was decoded gives a record that decodes to the same thing (duplicate
    // property names collapse in the map, so the bytes may be shorter, never longer).
    let again = fuzzing::encode(&rec).expect("a decoded record re-encodes");
    assert!(again.len() <= len, "re-encoded record grew");
    let back = fuzzing::decode(&again).expect("a re-encoded record decodes");
    assert_eq!(back.message, rec.message, "decode(encode(r)) != r");
    assert_eq!((back.position, back.flags), (rec.position, rec.flags));
    // One byte short of the record is a truncation, never a record.
    match fuzzing::decode(&buf[..len - 1]) {
        Err(RecordError::Truncated { .. }) => {}
        other => panic!("a cut record decoded as {other:?}"),
    }
}

/// The buffer as a commit-log segment: frame record after record the way recovery does.
fn walk(buf: &[u8]) {
    let mut at = 0;
    while at < buf.len() {
        let Ok(len) = fuzzing::peek_len(&buf[at..]) else {
            return;
        };
        if fuzzing::decode(&buf[at..]).is_err() {
            return;
        }
        at += len;
    }
    assert_eq!(at, buf.len());
}

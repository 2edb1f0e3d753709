//! How a message is stored in Redis: one MessagePack blob per stream entry, delayed member or
//! half message, so that a script moves it between keys without decoding it.
//!
//! The body is never copied on its way: it is written from the message's `Bytes` into the
//! blob, and read back as a slice of the blob the reply brought (a 1 KiB copy and an
//! allocation per message each way were a visible share of the send and receive paths).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{Message, MessageId, MessageView};

/// A stored message (written by `encode`; read by `decode`, through [`Incoming`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Envelope {
    pub(crate) id: MessageId,
    /// The topic it was sent to (also for retries and dead letters).
    pub(crate) topic: String,
    pub(crate) tag: Option<String>,
    pub(crate) keys: Vec<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) born: u64,
    /// Failed deliveries before this copy was stored (retries).
    pub(crate) reconsume: u32,
    /// Makes every stored copy a distinct sorted-set member.
    pub(crate) nonce: u64,
    /// Written as MessagePack `bin`, as `serde_bytes` writes a `Vec<u8>`.
    #[serde(serialize_with = "bin")]
    pub(crate) body: Bytes,
}

fn bin<S: Serializer>(body: &Bytes, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_bytes(body)
}

/// An envelope as read, its body borrowed from the blob. The fields and their order are
/// [`Envelope`]'s: MessagePack stores a struct as an array.
#[derive(Deserialize)]
struct Incoming<'a> {
    id: MessageId,
    topic: String,
    tag: Option<String>,
    keys: Vec<String>,
    properties: BTreeMap<String, String>,
    born: u64,
    reconsume: u32,
    nonce: u64,
    #[serde(borrow, with = "serde_bytes")]
    body: &'a [u8],
}

impl Incoming<'_> {
    fn with_body(self, body: Bytes) -> Envelope {
        Envelope {
            id: self.id,
            topic: self.topic,
            tag: self.tag,
            keys: self.keys,
            properties: self.properties,
            born: self.born,
            reconsume: self.reconsume,
            nonce: self.nonce,
            body,
        }
    }
}

fn nonce() -> u64 {
    MessageId::new().as_u128() as u64
}

impl Envelope {
    pub(crate) fn from_message(message: Message) -> Self {
        let p = message.into_parts();
        Envelope {
            id: p.id,
            topic: p.topic,
            tag: p.tag,
            keys: p.keys,
            properties: p.properties,
            born: p.born_timestamp,
            reconsume: 0,
            nonce: nonce(),
            body: p.body,
        }
    }

    /// A copy of a delivered message to store again (retry, dead letter, resend).
    pub(crate) fn from_view(view: &MessageView, reconsume: u32) -> Self {
        Envelope {
            id: view.id,
            topic: view.topic.clone(),
            tag: view.tag.clone(),
            keys: view.keys.clone(),
            properties: view.properties.clone(),
            born: view.born_timestamp,
            reconsume,
            nonce: nonce(),
            body: view.body.clone(),
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        // Sized once: growing from empty reallocated and copied the body several times.
        let fields: usize = self.topic.len()
            + self.tag.as_ref().map_or(0, String::len)
            + self.keys.iter().map(|k| k.len() + 5).sum::<usize>()
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>();
        let mut out = Vec::with_capacity(self.body.len() + fields + 64);
        rmp_serde::encode::write(&mut out, self).map_err(|e| {
            BrokerError::backend_caused(
                "redis",
                BackendErrorKind::Malformed,
                format!("encoding message {}", self.id),
                e,
            )
        })?;
        Ok(out)
    }

    /// Decodes a blob, copying the body out of it.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let incoming: Incoming<'_> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        let body = Bytes::copy_from_slice(incoming.body);
        Ok(incoming.with_body(body))
    }

    /// Decodes a blob it takes over; the body is a slice of it, not a copy.
    pub(crate) fn decode_owned(blob: Vec<u8>) -> std::result::Result<Self, String> {
        let blob = Bytes::from(blob);
        let incoming: Incoming<'_> = rmp_serde::from_slice(&blob).map_err(|e| e.to_string())?;
        // Where the borrowed body lies in the blob (it is borrowed from it, so it lies inside).
        let start = (incoming.body.as_ptr() as usize).wrapping_sub(blob.as_ptr() as usize);
        let end = start.wrapping_add(incoming.body.len());
        let body = if start <= end && end <= blob.len() {
            blob.slice(start..end)
        } else {
            Bytes::copy_from_slice(incoming.body)
        };
        Ok(incoming.with_body(body))
    }

    /// The message as a consumer sees it.
    pub(crate) fn view(
        self,
        queue_id: u32,
        queue_offset: u64,
        store_timestamp: u64,
        extra_attempts: u32,
    ) -> MessageView {
        MessageView {
            id: self.id,
            topic: self.topic,
            tag: self.tag,
            keys: self.keys,
            properties: self.properties,
            body: self.body,
            queue_id,
            queue_offset,
            born_timestamp: self.born,
            store_timestamp,
            reconsume_times: self.reconsume.saturating_add(extra_attempts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_binary_bodies_and_properties() {
        let m = Message::new("t", vec![0u8, 255, 10, 13])
            .with_tag("a")
            .with_key("k")
            .with_property("p", "v");
        let id = m.id();
        let e = Envelope::from_message(m);
        let back = Envelope::decode(&e.encode().unwrap()).unwrap();
        let v = back.view(2, 7, 99, 1);
        assert_eq!(v.id, id);
        assert_eq!(&v.body[..], &[0u8, 255, 10, 13]);
        assert_eq!(v.properties.get("p").map(String::as_str), Some("v"));
        assert_eq!((v.queue_id, v.queue_offset, v.reconsume_times), (2, 7, 1));
    }

    #[test]
    fn garbage_is_an_error_not_a_message() {
        assert!(Envelope::decode(b"\x00garbage").is_err());
        assert!(Envelope::decode_owned(b"\x00garbage".to_vec()).is_err());
    }

    /// The format as it was when the body was a `Vec<u8>` under `serde_bytes`: blobs stored
    /// before and after read alike.
    #[derive(Serialize, Deserialize)]
    struct Stored {
        id: MessageId,
        topic: String,
        tag: Option<String>,
        keys: Vec<String>,
        properties: BTreeMap<String, String>,
        born: u64,
        reconsume: u32,
        nonce: u64,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    }

    #[test]
    fn the_stored_format_is_unchanged() {
        let m = Message::new("t", vec![7u8; 300])
            .with_tag("a")
            .with_key("k")
            .with_property("p", "v");
        let e = Envelope::from_message(m);
        let before = Stored {
            id: e.id,
            topic: e.topic.clone(),
            tag: e.tag.clone(),
            keys: e.keys.clone(),
            properties: e.properties.clone(),
            born: e.born,
            reconsume: e.reconsume,
            nonce: e.nonce,
            body: e.body.to_vec(),
        };
        let old = rmp_serde::to_vec(&before).unwrap();
        assert_eq!(e.encode().unwrap(), old);
        let back = Envelope::decode_owned(old.clone()).unwrap();
        assert_eq!((back.id, back.nonce), (e.id, e.nonce));
        assert_eq!(back.body, e.body);
        let copied = Envelope::decode(&old).unwrap();
        assert_eq!(copied.body, e.body);
        let stored: Stored = rmp_serde::from_slice(&e.encode().unwrap()).unwrap();
        assert_eq!(stored.body, e.body.to_vec());
    }

    #[test]
    fn copies_are_distinct_members() {
        let e = Envelope::from_message(Message::new("t", "x"));
        let v = e.clone().view(0, 0, 0, 0);
        assert_ne!(
            Envelope::from_view(&v, 1).encode().unwrap(),
            Envelope::from_view(&v, 1).encode().unwrap()
        );
    }
}

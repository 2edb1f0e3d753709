//! How a message is stored in Redis: one MessagePack blob per stream entry, delayed member or
//! half message, so that a script moves it between keys without decoding it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::{Message, MessageId, MessageView};

/// A stored message.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
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
            body: p.body.to_vec(),
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
            body: view.body.to_vec(),
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec(self).map_err(|e| {
            BrokerError::backend_caused(
                "redis",
                BackendErrorKind::Malformed,
                format!("encoding message {}", self.id),
                e,
            )
        })
    }

    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
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
            body: self.body.into(),
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

//! What applications of mq use.
//!
//! Today this crate re-exports [`mq_core`]: the message model, the [`Broker`](mq_core::Broker)
//! contract and the embedded broker. The annotated listeners, YAML configuration, runtime and
//! template arrive with the starter issue.
//!
//! ```
//! use mq_starter::core::{Message, Destination};
//!
//! let dest: Destination = "order:created".parse()?;
//! let msg = Message::to_destination(dest, "{}");
//! assert_eq!(msg.tag(), Some("created"));
//! # Ok::<(), mq_starter::core::MessageError>(())
//! ```

pub use mq_core as core;

//! The single writer of the commit log. It drains every waiting request into one buffer,
//! assigns positions and queue offsets, writes the buffer with one `pwrite` (and, under
//! `flush: sync`, one `fdatasync`: group commit), appends the index entries and only then
//! answers the senders. After a failed write it refuses every later append until the store
//! is reopened, since only recovery can tell what reached the disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::sync::sync_segment;
use super::{MessageStore, Outgoing, Shared};
use crate::embedded::commit_log::Segment;
use crate::embedded::consume_queue::{tag_code, ConsumeQueue, CqEntry};
use crate::embedded::flush::FlushPolicy;
use crate::embedded::key_index::{self, KeyIndex};
use crate::embedded::record::{self, Placement};
use crate::error::{BackendErrorKind, BrokerError, Result};
use crate::message::now_millis;

/// One sender's messages for one queue: stored whole or not at all.
pub(super) struct AppendRequest {
    pub(super) queue: Arc<ConsumeQueue>,
    pub(super) messages: Vec<Outgoing>,
    /// Answered with the queue offset of the first message.
    pub(super) reply: oneshot::Sender<Result<u64>>,
}

/// What the writer's inbox carries.
pub(super) enum WriterMsg {
    Append(AppendRequest),
    Stop(oneshot::Sender<()>),
}

/// Where the writer is: built by open and not yet started, or running as a task or a thread.
pub(super) enum WriterSlot {
    Idle(Option<(Writer, mpsc::Receiver<WriterMsg>)>),
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

/// The one writer that appends: it drains every waiting request into one write (and one fsync
/// under the sync policy), indexes the records, then answers the senders.
pub(super) struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    write_pos: u64,
    buf: Vec<u8>,
    /// The largest record written (see [`MessageStore::record_limit`]).
    record_limit: usize,
    /// Set after an I/O failure: the writer refuses appends until the store is reopened, so
    /// that recovery, not guesswork, decides what the log holds.
    failed: Option<String>,
    /// The key index (unless turned off), and the entries of the batch being written.
    index: Option<Arc<KeyIndex>>,
    index_buf: Vec<key_index::Entry>,
}

/// Most requests one batch takes from the inbox.
const MAX_BATCH: usize = 4096;

impl Writer {
    /// A writer appending at `write_pos`, which lies in `active` (where recovery ended).
    pub(super) fn new(
        shared: Arc<Shared>,
        active: Arc<Segment>,
        write_pos: u64,
        record_limit: usize,
        index: Option<Arc<KeyIndex>>,
    ) -> Self {
        Writer {
            shared,
            active,
            write_pos,
            buf: Vec::with_capacity(1 << 20),
            record_limit,
            failed: None,
            index,
            index_buf: Vec::new(),
        }
    }

    /// Collects requests and writes them a batch at a time: `inline` on the writer's own
    /// thread, otherwise on the blocking pool (see [`MessageStore::start_writer`]).
    async fn run(self, mut rx: mpsc::Receiver<WriterMsg>, inline: bool) {
        let mut writer = Some(self);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(msg) = rx.recv().await {
            let mut stop = None;
            match msg {
                WriterMsg::Append(req) => batch.push(req),
                WriterMsg::Stop(ack) => stop = Some(ack),
            }
            while stop.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(WriterMsg::Append(req)) => batch.push(req),
                    Ok(WriterMsg::Stop(ack)) => stop = Some(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                match writer.take() {
                    Some(mut w) if inline => {
                        w.write_batch(&mut batch);
                        writer = Some(w);
                    }
                    Some(mut w) => {
                        let mut b = std::mem::take(&mut batch);
                        match tokio::task::spawn_blocking(move || {
                            w.write_batch(&mut b);
                            (w, b)
                        })
                        .await
                        {
                            Ok((w, b)) => {
                                writer = Some(w);
                                batch = b;
                            }
                            Err(e) => {
                                // The senders of that batch see their reply dropped (Closed).
                                tracing::error!(error = %e, "commit-log writer failed; the store refuses writes until reopened");
                            }
                        }
                    }
                    None => {
                        for req in batch.drain(..) {
                            let _ = req.reply.send(Err(BrokerError::backend(
                                "embedded",
                                BackendErrorKind::Failed,
                                "the commit-log writer failed; reopen the store",
                            )));
                        }
                    }
                }
            }
            if let Some(ack) = stop {
                rx.close();
                while let Ok(msg) = rx.try_recv() {
                    if let WriterMsg::Append(req) = msg {
                        let _ = req.reply.send(Err(BrokerError::Closed));
                    }
                }
                let _ = ack.send(());
                return;
            }
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Some(reason) = &self.failed {
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(BrokerError::backend(
                    "embedded",
                    BackendErrorKind::Failed,
                    format!("store is read-only after an earlier write failure: {reason}"),
                )));
            }
            return;
        }
        let sync = matches!(self.shared.flush, FlushPolicy::Sync);
        let segment_size = self.shared.commit_log.segment_size();
        let store_timestamp = now_millis();
        self.buf.clear();
        let mut buf_start = self.write_pos;
        // Per queue touched by this batch: its index entries and next offset.
        let mut queues: Vec<(Arc<ConsumeQueue>, Vec<u8>, u64)> = Vec::new();
        let mut results: Vec<Result<u64>> = Vec::with_capacity(batch.len());
        let mut failed: Option<BrokerError> = None;
        let indexing = self.index.is_some();
        self.index_buf.clear();

        for req in batch.iter() {
            let qi = match queues
                .iter()
                .position(|(q, _, _)| Arc::ptr_eq(q, &req.queue))
            {
                Some(i) => i,
                None => {
                    let next = req.queue.max_offset();
                    queues.push((req.queue.clone(), Vec::new(), next));
                    queues.len() - 1
                }
            };
            // A request is stored whole or not at all.
            let too_big = req
                .messages
                .iter()
                .find(|out| record::encoded_len(&out.parts).is_none_or(|l| l > self.record_limit));
            if let Some(out) = too_big {
                results.push(Err(BrokerError::InvalidConfig(format!(
                    "a record of topic {:?} exceeds the record limit of {} bytes",
                    out.parts.topic, self.record_limit
                ))));
                continue;
            }
            let first_offset = queues[qi].2;
            for out in &req.messages {
                let msg = &out.parts;
                let len = record::encoded_len(msg).unwrap_or(0);
                let pos = buf_start + self.buf.len() as u64;
                let pos = if pos - self.active.base + len as u64 > segment_size {
                    if let Err(e) = self.flush_buf(buf_start, sync).and_then(|()| self.roll()) {
                        failed = Some(e);
                        break;
                    }
                    buf_start = self.write_pos;
                    self.write_pos
                } else {
                    pos
                };
                let (ref q, ref mut entries, ref mut next) = queues[qi];
                let placement = Placement {
                    queue_id: q.queue_id,
                    queue_offset: *next,
                    position: pos,
                    store_timestamp,
                    reconsume_times: out.reconsume_times,
                    flags: 0,
                };
                record::encode_into(&mut self.buf, msg, &placement, len);
                if indexing {
                    key_index::entries_of(msg.id, &msg.keys, pos, &mut self.index_buf);
                }
                CqEntry {
                    position: pos,
                    size: len as u32,
                    tag_code: tag_code(msg.tag.as_deref()),
                    store_timestamp: out.index_time.unwrap_or(store_timestamp),
                }
                .encode(entries);
                *next += 1;
            }
            if failed.is_some() {
                break;
            }
            results.push(Ok(first_offset));
        }

        let outcome = match failed {
            Some(e) => Err(e),
            None => self.flush_buf(buf_start, sync).and_then(|()| {
                for (q, entries, _) in &queues {
                    q.append(entries)?;
                }
                Ok(())
            }),
        };
        match outcome {
            Ok(()) => {
                // Indexed before any sender is answered: a returned send is found by its id.
                if let Some(index) = &self.index {
                    index.add(&self.index_buf, self.write_pos);
                }
                self.shared
                    .dispatched
                    .store(self.write_pos, Ordering::Release);
                let messages = batch.iter().map(|r| r.messages.len() as u64).sum();
                self.shared.stats.batch(messages);
                for (req, result) in batch.drain(..).zip(results) {
                    let _ = req.reply.send(result);
                }
                self.shared.appended.send_modify(|v| *v = v.wrapping_add(1));
            }
            Err(e) => {
                tracing::error!(error = %e, "commit log append failed; the store refuses writes until reopened");
                let msg = e.to_string();
                self.failed = Some(msg.clone());
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(BrokerError::backend(
                        "embedded",
                        BackendErrorKind::Failed,
                        msg.clone(),
                    )));
                }
            }
        }
    }

    /// Writes the buffered records (which start at `buf_start`) and fsyncs under `sync`.
    fn flush_buf(&mut self, buf_start: u64, sync: bool) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        crate::embedded::io::write_at(
            &self.active.file,
            &self.active.path,
            &self.buf,
            buf_start - self.active.base,
        )
        .map_err(|e| BrokerError::io("write segment", &self.active.path, e))?;
        if sync {
            sync_segment(&self.active)?;
            self.shared.stats.synced();
        }
        self.write_pos = buf_start + self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        sync_segment(&self.active)?;
        self.shared.stats.synced();
        let base = self.active.base + self.shared.commit_log.segment_size();
        self.active = self.shared.commit_log.roll(base)?;
        self.write_pos = base;
        Ok(())
    }
}

impl MessageStore {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// On a multi-thread runtime the writer has a thread of its own, which keeps the hand-off
    /// per batch to one wake-up. On a current-thread runtime (where tests pause the clock) it
    /// is a task that writes each batch on the blocking pool, so the clock cannot jump while
    /// a write is under way.
    pub fn start_writer(&self) -> Result<()> {
        let mut slot = self.writer_task.lock();
        if let WriterSlot::Idle(parts) = &mut *slot {
            if let Some((writer, rx)) = parts.take() {
                let handle = tokio::runtime::Handle::current();
                *slot = match handle.runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::CurrentThread => {
                        WriterSlot::Task(tokio::spawn(writer.run(rx, false)))
                    }
                    _ => {
                        let thread = std::thread::Builder::new()
                            .name("mq-commitlog-writer".into())
                            .spawn(move || handle.block_on(writer.run(rx, true)))
                            .map_err(|e| {
                                BrokerError::io("spawn writer thread", &self.config.data_dir, e)
                            })?;
                        WriterSlot::Thread(thread)
                    }
                };
            }
        }
        Ok(())
    }

    /// Stops the writer after it has stored everything queued or deferred before, then syncs.
    pub async fn stop(&self) -> Result<()> {
        // Deferred appends were made before the stop: they are stored first.
        self.drain_deferred().await;
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let slot = std::mem::replace(&mut *self.writer_task.lock(), WriterSlot::Idle(None));
        match slot {
            WriterSlot::Task(handle) => {
                let _ = handle.await;
            }
            WriterSlot::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            WriterSlot::Idle(_) => {}
        }
        if let Some(index) = self.key_index().cloned() {
            // Parts being sealed reach their files before the directory can be reopened.
            let _ = tokio::task::spawn_blocking(move || index.finish()).await;
        }
        self.sync()
    }

    /// Whether the writer is gone.
    pub fn is_stopped(&self) -> bool {
        self.writer.is_closed()
    }
}

#[cfg(test)]
mod tests;

//! What operators see and do to groups: their progress and owners (from the live windows, or
//! the stored table for a group with no member in this process), and offset resets applied to
//! the live windows and the table together.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::group::Group;
use super::progress::QueueProgress;
use super::Groups;
use crate::error::{BrokerError, Result};
use crate::stats::{GroupQueueStats, GroupStats, QueueOffset, ResetTo};
use crate::subscription::MessageModel;
use crate::system_topics::listed_group;

impl Groups {
    /// The (group, topic) pairs of this process's groups.
    fn live_groups(&self, group: &str) -> Vec<Arc<Group>> {
        let mut found: Vec<(String, Arc<Group>)> = self
            .groups
            .lock()
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, t), g)| (t.clone(), g.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.into_iter().map(|(_, g)| g).collect()
    }

    /// Every group with members here or stored progress, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> =
            self.groups.lock().keys().map(|(g, _)| g.clone()).collect();
        names.extend(self.offsets.rows().into_iter().map(|(k, _)| k.group));
        names.into_iter().filter(|g| listed_group(g)).collect()
    }

    /// The group's figures; `None` if it is neither live nor stored.
    pub fn stats(&self, group: &str) -> Option<GroupStats> {
        let live = self.live_groups(group);
        let mut model = None;
        let mut members = Vec::new();
        let mut rows = Vec::new();
        let mut covered = BTreeSet::new();
        for g in &live {
            let inner = g.inner.lock();
            model = Some(inner.subscription.model);
            members.extend(inner.members.keys().cloned());
            let owner = |q: usize| -> Option<String> {
                if inner.subscription.model == MessageModel::Broadcasting {
                    return None;
                }
                inner
                    .members
                    .iter()
                    .find(|(_, m)| m.assigned.contains(&(q as u32)))
                    .map(|(name, _)| name.clone())
            };
            let mut windows: Vec<(Option<&String>, &Vec<QueueProgress>)> = Vec::new();
            if !inner.shared.is_empty() {
                windows.push((None, &inner.shared));
            }
            windows.extend(inner.own.iter().map(|(i, w)| (Some(i), w)));
            for (instance, window) in windows {
                for (q, p) in window.iter().enumerate() {
                    let key = g.key(&inner.subscription, q, instance.map(String::as_str));
                    let max = g.sources[q].max_offset();
                    let committed = p.committed();
                    covered.insert(key.clone());
                    rows.push(GroupQueueStats {
                        topic: key.topic,
                        queue_id: key.queue,
                        instance: key.instance,
                        committed,
                        max_offset: max,
                        lag: max.saturating_sub(committed),
                        owner: if (q as u32) < g.real_queues {
                            owner(q)
                        } else {
                            None
                        },
                    });
                }
            }
        }
        // Stored progress of what has no window here (a group that has not subscribed since
        // the broker opened, a broadcasting member that left).
        let mut stored = false;
        for (key, committed) in self.offsets.rows() {
            if key.group != group {
                continue;
            }
            stored = true;
            if covered.contains(&key) {
                continue;
            }
            let max = self
                .store
                .topic(&key.topic)
                .and_then(|t| t.queues.get(key.queue as usize).map(|cq| cq.max_offset()))
                .unwrap_or(committed);
            rows.push(GroupQueueStats {
                topic: key.topic,
                queue_id: key.queue,
                instance: key.instance,
                committed,
                max_offset: max,
                lag: max.saturating_sub(committed),
                owner: None,
            });
        }
        if live.is_empty() && !stored {
            return None;
        }
        Some(
            GroupStats {
                group: group.to_owned(),
                model,
                members,
                queues: rows,
            }
            .sorted(),
        )
    }

    /// Moves the group's progress on every queue of `topic` to `to`: its live windows start
    /// again there, and the table holds it. Saving the table is left to the caller.
    pub fn reset(&self, group: &str, topic: &str, to: ResetTo) -> Result<Vec<QueueOffset>> {
        let t = self
            .store
            .topic(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_owned()))?;
        let mut targets = Vec::with_capacity(t.queues.len());
        for cq in &t.queues {
            targets.push(match to {
                ResetTo::First => cq.min_offset(),
                ResetTo::Last => cq.max_offset(),
                ResetTo::Timestamp(ms) => cq.offset_for_timestamp(ms)?,
            });
        }
        let stored: Vec<_> = self
            .offsets
            .rows()
            .into_iter()
            .filter(|(k, _)| k.group == group && k.topic == topic)
            .map(|(k, _)| k)
            .collect();
        let live = self
            .groups
            .lock()
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned();
        if live.is_none() && stored.is_empty() {
            return Err(BrokerError::GroupNotFound {
                group: group.to_owned(),
                topic: Some(topic.to_owned()),
            });
        }
        let set_stored = || {
            for key in &stored {
                if let Some(target) = targets.get(key.queue as usize) {
                    self.offsets.set(key.clone(), *target);
                }
            }
        };
        match live {
            Some(g) => {
                {
                    let mut guard = g.inner.lock();
                    // Tokens handed out so far are below this one.
                    let floor = self.next_id.load(Ordering::Relaxed);
                    let real = g.real_queues as usize;
                    let sub = guard.subscription.clone();
                    let inner = &mut *guard;
                    let mut windows: Vec<(Option<&str>, &mut Vec<QueueProgress>)> = Vec::new();
                    if !inner.shared.is_empty() {
                        windows.push((None, &mut inner.shared));
                    }
                    windows.extend(inner.own.iter_mut().map(|(i, w)| (Some(i.as_str()), w)));
                    for (instance, window) in windows {
                        for (q, target) in targets.iter().enumerate().take(real) {
                            if let Some(p) = window.get_mut(q) {
                                *p = QueueProgress::reset(*target, floor);
                                self.offsets.set(g.key(&sub, q, instance), *target);
                            }
                        }
                    }
                    // Under the group's lock, so that a concurrent save sees the windows and
                    // the table agree.
                    set_stored();
                }
                g.bump();
            }
            None => set_stored(),
        }
        tracing::info!(group, topic, ?to, ?targets, "consumer offsets reset");
        Ok(targets
            .into_iter()
            .enumerate()
            .map(|(q, offset)| QueueOffset {
                queue_id: q as u32,
                offset,
            })
            .collect())
    }
}

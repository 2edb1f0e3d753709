//! One (group, topic): its members and the queues each is assigned, the windows of its
//! queues (the group's when clustering, each member's when broadcasting), and the signal that
//! wakes its waiting consumers. The group owns the windows because every member lives in
//! this process: a queue moving to another member redelivers nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::progress::QueueProgress;
use crate::broker::ConsumerOptions;
use crate::embedded::consume_queue::{tag_code, ConsumeQueue};
use crate::embedded::offsets::ProgressKey;
use crate::subscription::{MessageModel, Subscription, TagFilter};

#[derive(Debug)]
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) options: ConsumerOptions,
    pub(super) assigned: Vec<u32>,
    pub(super) cursor: usize,
}

#[derive(Debug)]
pub(super) struct GroupInner {
    pub(super) subscription: Subscription,
    /// Tag codes the filter accepts; `None` accepts all.
    pub(super) codes: Option<Vec<u32>>,
    pub(super) members: BTreeMap<String, Member>,
    /// Clustering progress, by queue id.
    pub(super) shared: Vec<QueueProgress>,
    /// Broadcasting progress, by member instance and queue id.
    pub(super) own: HashMap<String, Vec<QueueProgress>>,
}

impl GroupInner {
    /// The windows `instance` works on: the group's (clustering) or its own (broadcasting).
    pub(super) fn progress_mut(&mut self, instance: &str) -> Option<&mut Vec<QueueProgress>> {
        match self.subscription.model {
            MessageModel::Clustering => Some(&mut self.shared),
            MessageModel::Broadcasting => self.own.get_mut(instance),
        }
    }
}

/// One (group, topic).
#[derive(Debug)]
pub(super) struct Group {
    /// The topic's queues, then the group's retry queue (index `real_queues`).
    pub(super) sources: Vec<Arc<ConsumeQueue>>,
    pub(super) real_queues: u32,
    pub(super) retry_topic: String,
    pub(super) inner: Mutex<GroupInner>,
    changed: watch::Sender<u64>,
}

impl Group {
    /// A group without members reading `topic_queues`, then `retry_queues`.
    pub(super) fn new(
        topic_queues: &[Arc<ConsumeQueue>],
        retry_queues: &[Arc<ConsumeQueue>],
        retry_topic: String,
        subscription: Subscription,
    ) -> Self {
        let mut sources = topic_queues.to_vec();
        sources.extend(retry_queues.iter().cloned());
        Group {
            sources,
            real_queues: topic_queues.len() as u32,
            retry_topic,
            inner: Mutex::new(GroupInner {
                codes: codes(&subscription.filter),
                subscription,
                members: BTreeMap::new(),
                shared: Vec::new(),
                own: HashMap::new(),
            }),
            changed: watch::channel(0).0,
        }
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that changes whenever the group does (a member came or went, a delivery
    /// was settled or handed back).
    pub(super) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a consumer waits on [`subscribe_changes`](Self::subscribe_changes).
    pub(super) fn has_waiters(&self) -> bool {
        self.changed.receiver_count() > 0
    }

    /// The progress key of source `index` for `instance` (broadcasting) or the group.
    pub(super) fn key(
        &self,
        sub: &Subscription,
        index: usize,
        instance: Option<&str>,
    ) -> ProgressKey {
        let (topic, queue) = if index as u32 >= self.real_queues {
            (self.retry_topic.clone(), 0)
        } else {
            (sub.topic.clone(), index as u32)
        };
        ProgressKey {
            topic,
            group: sub.group.clone(),
            instance: instance.map(str::to_owned),
            queue,
        }
    }
}

pub(super) fn codes(filter: &TagFilter) -> Option<Vec<u32>> {
    match filter {
        TagFilter::All => None,
        TagFilter::Tags(tags) => Some(tags.iter().map(|t| tag_code(Some(t))).collect()),
    }
}

/// RocketMQ's `AllocateMessageQueueAveragely` over members sorted by name (clustering), or
/// every queue to every member (broadcasting).
pub(super) fn rebalance(inner: &mut GroupInner, queue_count: u32) {
    let broadcasting = inner.subscription.model == MessageModel::Broadcasting;
    let m = inner.members.len() as u32;
    for (i, member) in inner.members.values_mut().enumerate() {
        member.assigned = if broadcasting {
            (0..queue_count).collect()
        } else {
            crate::rebalance::allocate(queue_count, m, i as u32)
        };
        member.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(model: MessageModel, names: &[&str]) -> GroupInner {
        let members = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let member = Member {
                    id: i as u64,
                    options: ConsumerOptions::new(),
                    assigned: vec![99],
                    cursor: 5,
                };
                (name.to_string(), member)
            })
            .collect();
        GroupInner {
            subscription: Subscription::new("t", "g").model(model),
            codes: None,
            members,
            shared: Vec::new(),
            own: HashMap::new(),
        }
    }

    fn assigned(inner: &GroupInner) -> Vec<(&str, Vec<u32>, usize)> {
        inner
            .members
            .iter()
            .map(|(n, m)| (n.as_str(), m.assigned.clone(), m.cursor))
            .collect()
    }

    #[test]
    fn clustering_shares_the_queues_averagely_by_member_name() {
        // Joined in any order, members are taken sorted by name.
        let mut g = inner(MessageModel::Clustering, &["c", "a", "b"]);
        rebalance(&mut g, 4);
        assert_eq!(
            assigned(&g),
            [("a", vec![0, 1], 0), ("b", vec![2], 0), ("c", vec![3], 0)]
        );
        g.members.remove("b");
        rebalance(&mut g, 4);
        assert_eq!(assigned(&g), [("a", vec![0, 1], 0), ("c", vec![2, 3], 0)]);
    }

    #[test]
    fn broadcasting_gives_every_member_every_queue() {
        let mut g = inner(MessageModel::Broadcasting, &["x", "y"]);
        rebalance(&mut g, 3);
        assert_eq!(
            assigned(&g),
            [("x", vec![0, 1, 2], 0), ("y", vec![0, 1, 2], 0)]
        );
    }

    #[test]
    fn each_member_works_on_the_windows_of_its_model() {
        let mut g = inner(MessageModel::Clustering, &["x"]);
        g.shared = vec![QueueProgress::new(7)];
        let clustering = g.progress_mut("anyone").map(|p| p[0].committed());
        assert_eq!(clustering, Some(7), "clustering windows are the group's");

        let mut g = inner(MessageModel::Broadcasting, &["x"]);
        g.own.insert("x".into(), vec![QueueProgress::new(3)]);
        assert_eq!(g.progress_mut("x").map(|p| p[0].committed()), Some(3));
        assert!(
            g.progress_mut("y").is_none(),
            "a member has its own windows"
        );
    }
}

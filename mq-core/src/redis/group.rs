//! Consumer-group membership on Redis: the shared subscription, live members by heartbeat,
//! the averagely allocation over them, and leases on orderly queues.

use crate::broker::ConsumerOptions;
use crate::error::{BrokerError, Result};
use crate::subscription::{MessageModel, Subscription, TagFilter};

use super::scripts;
use super::Shared;

/// A subscription as members compare it.
pub(crate) fn describe(sub: &Subscription) -> String {
    let filter = match &sub.filter {
        TagFilter::All => "*".to_owned(),
        TagFilter::Tags(tags) => tags.join("||"),
    };
    format!("{}|{}|{:?}|{:?}", sub.topic, filter, sub.model, sub.mode)
}

impl Shared {
    /// Heartbeats older than this mean the member is gone.
    pub(crate) fn liveness_ms(&self) -> u64 {
        3 * self.config.heartbeat_interval.as_millis() as u64
    }

    /// Joins a group: refuses a subscription that differs from the live members' and an
    /// instance name that is already live.
    pub(crate) async fn join_group(
        &self,
        sub: &Subscription,
        options: &ConsumerOptions,
    ) -> Result<()> {
        let members = self.keys.members(&sub.group, &sub.topic);
        let mine = describe(sub);
        let now = self.clock.now_ms();
        // One script: two instances starting together cannot both pass the checks.
        let (code, stored): (i64, String) = self
            .redis
            .script(
                "joining the group",
                &scripts::JOIN,
                vec![members, self.keys.subscription(&sub.group, &sub.topic)],
                vec![
                    options.instance.as_bytes().to_vec(),
                    now.to_string().into_bytes(),
                    now.saturating_sub(self.liveness_ms())
                        .to_string()
                        .into_bytes(),
                    mine.as_bytes().to_vec(),
                ],
            )
            .await?;
        let reason = match code {
            0 => return Ok(()),
            1 => {
                return Err(BrokerError::InstanceTaken {
                    group: sub.group.clone(),
                    instance: options.instance.clone(),
                })
            }
            _ => format!(
                "members of a group must subscribe identically: live members use {stored}, this one {mine}"
            ),
        };
        Err(BrokerError::InvalidSubscription {
            group: sub.group.clone(),
            reason,
        })
    }

    /// Records that `instance` is alive and forgets members long gone.
    pub(crate) async fn heartbeat(
        &self,
        members_key: &str,
        seen: Option<&str>,
        instance: &str,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let mut pipe = ::redis::pipe();
        if let Some(seen) = seen {
            pipe.cmd("HSET").arg(seen).arg(instance).arg(now).ignore();
        }
        pipe.cmd("ZADD")
            .arg(members_key)
            .arg(now)
            .arg(instance)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(members_key)
            .arg("-inf")
            .arg(format!("({}", now.saturating_sub(10 * self.liveness_ms())))
            .ignore();
        self.redis.pipe::<()>("heartbeat", pipe).await
    }

    /// Heartbeats and reads the live members in one round trip.
    pub(crate) async fn heartbeat_and_members(
        &self,
        key: &str,
        seen: Option<&str>,
        instance: &str,
    ) -> Result<Vec<String>> {
        let now = self.clock.now_ms();
        let mut pipe = ::redis::pipe();
        if let Some(seen) = seen {
            pipe.cmd("HSET").arg(seen).arg(instance).arg(now).ignore();
        }
        pipe.cmd("ZADD")
            .arg(key)
            .arg(now)
            .arg(instance)
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(now.saturating_sub(self.liveness_ms()))
            .arg("+inf");
        let (mut members,): (Vec<String>,) = self.redis.pipe("heartbeat", pipe).await?;
        members.sort();
        Ok(members)
    }

    /// Takes or renews the lease of an orderly queue; true if `instance` holds it.
    pub(crate) async fn lease(&self, key: &str, instance: &str) -> Result<bool> {
        let held: i64 = self
            .redis
            .script(
                "leasing an orderly queue",
                &scripts::LEASE,
                vec![key.to_owned()],
                vec![
                    instance.as_bytes().to_vec(),
                    self.liveness_ms().to_string().into_bytes(),
                ],
            )
            .await?;
        Ok(held == 1)
    }

    /// Gives up a lease held by `instance`.
    pub(crate) async fn release(&self, key: &str, instance: &str) -> Result<()> {
        let _: i64 = self
            .redis
            .script(
                "releasing an orderly queue",
                &scripts::RELEASE,
                vec![key.to_owned()],
                vec![instance.as_bytes().to_vec()],
            )
            .await?;
        Ok(())
    }
}

/// The queues of `instance` among the live `members` (sorted): all of them when broadcasting.
pub(crate) fn assign(
    model: MessageModel,
    queues: u32,
    members: &[String],
    instance: &str,
) -> Vec<u32> {
    match model {
        MessageModel::Broadcasting => (0..queues).collect(),
        MessageModel::Clustering => match members.iter().position(|m| m == instance) {
            Some(i) => crate::rebalance::allocate(queues, members.len() as u32, i as u32),
            None => Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::ConsumeMode;

    #[test]
    fn subscriptions_compare_by_topic_filter_model_and_mode() {
        let a = Subscription::new("t", "g");
        assert_eq!(describe(&a), describe(&a.clone()));
        assert_ne!(describe(&a), describe(&a.clone().tags("x").unwrap()));
        assert_ne!(
            describe(&a),
            describe(&a.clone().mode(ConsumeMode::Orderly))
        );
    }

    #[test]
    fn members_share_queues_and_strangers_get_none() {
        let m = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(assign(MessageModel::Clustering, 4, &m, "a"), vec![0, 1]);
        assert_eq!(assign(MessageModel::Clustering, 4, &m, "b"), vec![2, 3]);
        assert!(assign(MessageModel::Clustering, 4, &m, "c").is_empty());
        assert_eq!(
            assign(MessageModel::Broadcasting, 3, &m, "c"),
            vec![0, 1, 2]
        );
    }
}

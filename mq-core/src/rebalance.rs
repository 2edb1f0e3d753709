//! How a clustering group's queues are shared among its members.

/// RocketMQ's `AllocateMessageQueueAveragely`: the queues of member `index` (of `members`,
/// sorted by name) among `queues`. The first `queues % members` members get one more.
pub(crate) fn allocate(queues: u32, members: u32, index: u32) -> Vec<u32> {
    if members == 0 || index >= queues {
        return Vec::new();
    }
    let rem = queues % members;
    let size = if queues <= members {
        1
    } else if rem > 0 && index < rem {
        queues / members + 1
    } else {
        queues / members
    };
    let start = if rem > 0 && index < rem {
        index * size
    } else {
        index * size + rem
    };
    (start..(start + size).min(queues)).collect()
}

#[cfg(test)]
mod tests {
    use super::allocate;

    #[test]
    fn allocation_matches_rocketmq_averagely() {
        assert_eq!(allocate(4, 2, 0), vec![0, 1]);
        assert_eq!(allocate(4, 2, 1), vec![2, 3]);
        assert_eq!(allocate(5, 2, 0), vec![0, 1, 2]);
        assert_eq!(allocate(5, 2, 1), vec![3, 4]);
        assert_eq!(allocate(4, 3, 0), vec![0, 1]);
        assert_eq!(allocate(4, 3, 2), vec![3]);
        assert_eq!(allocate(2, 3, 2), Vec::<u32>::new());
        assert_eq!(allocate(4, 1, 0), vec![0, 1, 2, 3]);
        // Every queue is allocated exactly once.
        for q in 1..10 {
            for m in 1..6 {
                let mut all: Vec<u32> = (0..m).flat_map(|i| allocate(q, m, i)).collect();
                all.sort();
                assert_eq!(all, (0..q).collect::<Vec<_>>(), "{q} queues, {m} members");
            }
        }
    }
}

//! Partitions: several consumers of one projection, each owning a share of the aggregates.

/// One of `count` partitions of a consumer: the aggregates whose id hashes to `index`.
/// Each partition has its own checkpoint and leadership, so partitions of one projection
/// run in parallel on different processes while each aggregate's events stay in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// How many there are.
    pub count: u32,
}

impl Partition {
    /// Whether events of `aggregate_id` belong to this partition. FNV-1a: stable across
    /// processes, versions and platforms (the standard hasher promises none of that).
    #[must_use]
    pub fn owns(&self, aggregate_id: &str) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in aggregate_id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

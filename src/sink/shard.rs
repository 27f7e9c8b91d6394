//! Which shard of a ClickHouse cluster a request's rows go to.
//!
//! The sharding key is the request's batch, (principal, batch id): every row of a request, its
//! accepted rows and its rejected ones, lands on one shard, so a probe for "is this batch
//! stored?" has one place to look and a batch never straddles shards. Batch ids are random or
//! at least unique per principal, which spreads batches evenly. The hash is FNV-1a 64, fixed
//! here rather than taken from the standard library, so that every sluice instance and every
//! version of it routes a batch to the same shard (spool replay after an upgrade included).
//! Shards take batches in proportion to their weights, as ClickHouse's `remote_servers`
//! `<weight>` does for a Distributed table.

use super::BatchKey;

/// Shard weights, in the order of `clickhouse.shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// Running sums of the weights: shard i takes hash values in [ends[i-1], ends[i]).
    ends: Vec<u64>,
}

impl ShardMap {
    /// One shard: everything goes to index 0.
    pub fn single() -> ShardMap {
        ShardMap { ends: vec![1] }
    }

    /// Shards with these weights (each at least 1; config validation makes sure).
    pub fn weighted(weights: impl IntoIterator<Item = u32>) -> ShardMap {
        let mut total = 0u64;
        let ends: Vec<u64> = weights
            .into_iter()
            .map(|weight| {
                total += u64::from(weight.max(1));
                total
            })
            .collect();
        if ends.is_empty() {
            return ShardMap::single();
        }
        ShardMap { ends }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The shard of a batch; 0 for rows without a batch key.
    pub fn shard_of(&self, key: Option<&BatchKey>) -> usize {
        let (Some((principal, batch_id)), true) = (key, self.ends.len() > 1) else {
            return 0;
        };
        let total = *self.ends.last().expect("never empty");
        let point = batch_hash(principal, batch_id) % total;
        self.ends.partition_point(|&end| end <= point)
    }
}

/// FNV-1a 64 of `principal`, a zero byte, and `batch_id`.
pub fn batch_hash(principal: &str, batch_id: &str) -> u64 {
    fnv1a(principal.bytes().chain([0]).chain(batch_id.bytes()))
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(principal: &str, batch_id: &str) -> BatchKey {
        (principal.to_string(), batch_id.to_string())
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a("".bytes()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a".bytes()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(batch_hash("p", "b"), fnv1a("p\0b".bytes()));
    }

    #[test]
    fn batches_spread_by_weight_and_stay_put() {
        let map = ShardMap::weighted([1, 3]);
        let mut counts = [0usize; 2];
        for i in 0..4000 {
            let shard = map.shard_of(Some(&key("edge-a", &format!("batch-{i}"))));
            counts[shard] += 1;
            assert_eq!(
                map.shard_of(Some(&key("edge-a", &format!("batch-{i}")))),
                shard
            );
        }
        assert!(counts[0] > 800 && counts[0] < 1200, "{counts:?}");
        assert_eq!(ShardMap::single().shard_of(Some(&key("p", "b"))), 0);
        assert_eq!(map.shard_of(None), 0);
        assert_eq!(ShardMap::weighted([]).len(), 1);
    }
}

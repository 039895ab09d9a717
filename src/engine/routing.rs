//! Which shard owns a topic, and where the owner keeps it. The owner is stable across runs
//! and machines (FNV-1a of the topic's bytes), so a topic's owner, and with it the order of
//! its events, never depends on start-up luck. The place in the owner's topic table is not:
//! that hash is keyed at random, once per process, so that no client can choose names that
//! collide there.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use hashbrown::DefaultHashBuilder;

/// The shard that sequences and fans out `topic`, among `shards` shards.
pub fn owner_of(topic: &[u8], shards: usize) -> usize {
    owner(route_hash(topic), shards)
}

/// [`owner_of`] for a topic whose [`route_hash`] is already known (a parsed
/// [`Topic`](super::Topic) carries it).
pub fn owner(route: u64, shards: usize) -> usize {
    debug_assert!(shards > 0);
    (route % shards as u64) as usize
}

/// The hash [`owner_of`] reduces: FNV-1a of the bytes.
pub fn route_hash(bytes: &[u8]) -> u64 {
    fnv1a(bytes)
}

/// The hash of a topic in its owner's topic table: foldhash with one random key for the whole
/// process. One key for every shard (not one each) lets a topic carry the hash from the shard
/// that parsed it to the shard that owns it ([`Topic::table_hash`](super::Topic::table_hash)).
pub fn table_hash(bytes: &[u8]) -> u64 {
    static KEY: OnceLock<DefaultHashBuilder> = OnceLock::new();
    KEY.get_or_init(DefaultHashBuilder::default).hash_one(bytes)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_table_hash_is_the_same_on_every_thread() {
        let here = table_hash(b"sensors/t1");
        let there = std::thread::spawn(|| table_hash(b"sensors/t1"))
            .join()
            .unwrap();
        assert_eq!(here, there);
        assert_ne!(table_hash(b"sensors/t1"), table_hash(b"sensors/t2"));
    }

    #[test]
    fn topics_spread_over_shards() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner_of(format!("sensors/t{i}").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "uneven spread: {seen:?}");
    }
}

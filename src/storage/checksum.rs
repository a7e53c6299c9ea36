//! CRC-32C (Castagnoli), the checksum etcd's `HashKV`, `Hash` and snapshot status use (Go's
//! `crc32.MakeTable(crc32.Castagnoli)`), and the whole-state hash behind `Maintenance.Hash`.
//! Written here because the crate we already depend on (crc32fast) only knows the IEEE polynomial.

use super::{Engine, StorageError};

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// One lookup table per byte value, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A running CRC-32C, fed in pieces as Go's `hash.Hash32` is.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(!0)
    }
}

impl Crc32c {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for &b in bytes {
            crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// A CRC-32C over every row of every table (table name, then each key and value, in order),
/// leaving out the rows `skip` names. etcd's `Hash` does the same over bbolt's buckets, but its
/// value also depends on bbolt's bucket names and layout, so ours cannot equal etcd's: it is
/// stable for one state (two members holding the same data answer the same) and that is all a
/// client can rely on.
pub fn hash_all(engine: &dyn Engine, skip: &dyn Fn(&str, &[u8]) -> bool) -> Result<u32, StorageError> {
    let mut crc = Crc32c::default();
    let mut last_table: Option<String> = None;
    engine.scan_all(&mut |table, key, value| {
        if skip(table, key) {
            return true;
        }
        if last_table.as_deref() != Some(table) {
            crc.update(table.as_bytes());
            last_table = Some(table.to_string());
        }
        crc.update(key);
        crc.update(value);
        true
    })?;
    Ok(crc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_castagnoli_check_values() {
        // The standard check value of CRC-32C, and RFC 3720's 32 zero bytes.
        let mut c = Crc32c::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
        let mut z = Crc32c::default();
        z.update(&[0u8; 32]);
        assert_eq!(z.finish(), 0x8A91_36AA);
        // Feeding in pieces equals feeding at once.
        let mut parts = Crc32c::default();
        parts.update(b"1234");
        parts.update(b"56789");
        assert_eq!(parts.finish(), 0xE306_9283);
    }

    #[test]
    fn etcds_empty_key_bucket_hash() {
        // A fresh etcd 3.5.16 answers `endpoint hashkv` with 1084519789: the crc of just "key".
        let mut c = Crc32c::default();
        c.update(b"key");
        assert_eq!(c.finish(), 1_084_519_789);
    }

    #[test]
    fn whole_state_hash_is_stable_and_skips_what_it_is_told() {
        use crate::mvcc::mem_engine::MemEngine;
        use crate::storage::{Engine, WriteBatch};
        let a = MemEngine::default();
        let b = MemEngine::default();
        for e in [&a, &b] {
            let mut batch = WriteBatch::default();
            batch.put("kv", b"k".to_vec(), b"v".to_vec()).put("lease", b"l".to_vec(), b"1".to_vec());
            e.write(batch).unwrap();
        }
        // Two members with the same data but different raft positions hash alike.
        let mut pos = WriteBatch::default();
        pos.put("meta", b"raft_applied".to_vec(), b"7".to_vec());
        a.write(pos).unwrap();
        let skip = |t: &str, k: &[u8]| t == "meta" && k == b"raft_applied";
        let ha = hash_all(&a, &skip).unwrap();
        assert_eq!(ha, hash_all(&b, &skip).unwrap());
        assert_ne!(ha, hash_all(&a, &|_: &str, _: &[u8]| false).unwrap());
        // Any change of data changes it.
        let mut more = WriteBatch::default();
        more.put("kv", b"k".to_vec(), b"w".to_vec());
        b.write(more).unwrap();
        assert_ne!(ha, hash_all(&b, &skip).unwrap());
    }
}

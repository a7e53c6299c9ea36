//! The persisted form of one lease, byte for byte etcd 3.5.16's `lease` bucket: the key is the lease
//! id as 8 big-endian bytes, the value a marshalled `leasepb.Lease{ID=1, TTL=2, RemainingTTL=3}`.
//! Keeping etcd's layout lets a future snapshot exporter copy the rows as they are.

use prost::Message;

use crate::error::{Error, Result};

/// etcd's `leasepb.Lease`. `remaining_ttl` is the last checkpointed remaining time in seconds; 0
/// means "none recorded, use the granted TTL" (etcd's meaning of the field).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The row key of lease `id` (etcd's `int64ToBytes`: the two's complement bits, big-endian, so
/// negative ids, which etcd accepts from clients, sort after positive ones).
pub(crate) fn row_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// Decode one row; a row whose key and record disagree is damage, not a lease.
pub(crate) fn decode(key: &[u8], value: &[u8]) -> Result<LeaseRecord> {
    let id_bytes: [u8; 8] =
        key.try_into().map_err(|_| Error::Storage(format!("lease row key of {} bytes (want 8)", key.len())))?;
    let id = u64::from_be_bytes(id_bytes) as i64;
    let record = LeaseRecord::decode(value).map_err(|e| Error::Storage(format!("corrupt lease row {id:x}: {e}")))?;
    if record.id != id {
        return Err(Error::Storage(format!("lease row {id:x} holds lease {:x}", record.id)));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_etcds_leasepb() {
        let r = LeaseRecord { id: 0x694d_9a8d_8a5c_2b04, ttl: 10, remaining_ttl: 7 };
        let bytes = r.encode_to_vec();
        // field 1 varint, field 2 varint (0x10 10), field 3 varint (0x18 7)
        assert_eq!(bytes[0], 0x08);
        assert_eq!(&bytes[bytes.len() - 4..], &[0x10, 10, 0x18, 7]);
        assert_eq!(decode(&row_key(r.id), &bytes).unwrap(), r);
    }

    #[test]
    fn negative_ids_round_trip_and_damage_is_an_error() {
        let r = LeaseRecord { id: -5, ttl: 2, remaining_ttl: 0 };
        assert_eq!(row_key(-5), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb]);
        assert_eq!(decode(&row_key(-5), &r.encode_to_vec()).unwrap(), r);
        assert!(decode(&[1, 2, 3], &r.encode_to_vec()).is_err());
        assert!(decode(&row_key(6), &r.encode_to_vec()).is_err());
        assert!(decode(&row_key(-5), &[0xff, 0xff]).is_err());
    }
}

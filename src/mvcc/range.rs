//! Range post-processing exactly as etcd 3.5.16's `applierV3backend.Range` does it: how many rows
//! to fetch, then the min/max revision filters, the sort, the limit and `keys_only` — including
//! its quirks (a NONE order with a non-KEY target sorts ascending, but only the `limit + 1` rows
//! it fetched; `count` ignores both the limit and the filters).

use super::go_sort::go_sort;
use super::RangeResult;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::mvccpb::KeyValue;

/// How many live keys the index walk should hand over (0 = all). etcd fetches everything when
/// it will sort (by the requested order, before NONE+target is turned into ASCEND) or filter,
/// otherwise one more than the limit so it can tell whether there is more.
pub(crate) fn fetch_limit(req: &RangeRequest) -> usize {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    if req.sort_order != SortOrder::None as i32 || filtered || req.limit <= 0 {
        return 0;
    }
    usize::try_from(req.limit).ok().and_then(|l| l.checked_add(1)).unwrap_or(0)
}

/// Apply filters, sort, limit and `keys_only` to the fetched key-values.
pub(crate) fn finish(req: &RangeRequest, mut kvs: Vec<KeyValue>, count: i64, revision: i64) -> RangeResult {
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }

    let mut order = req.sort_order;
    if req.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        order = SortOrder::Ascend as i32;
    }
    let descend = if order == SortOrder::Ascend as i32 {
        Some(false)
    } else if order == SortOrder::Descend as i32 {
        Some(true)
    } else {
        None
    };
    if let (Some(descend), Ok(target)) = (descend, SortTarget::try_from(req.sort_target)) {
        sort(&mut kvs, target, descend);
    }

    let mut more = false;
    if let Ok(limit) = usize::try_from(req.limit) {
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    RangeResult { kvs, more, count, revision }
}

/// etcd's comparators, revisions compared by the sign of their (wrapping) difference as Go does.
fn sort(kvs: &mut [KeyValue], target: SortTarget, descend: bool) {
    let less: fn(&KeyValue, &KeyValue) -> bool = match target {
        SortTarget::Key => |a, b| a.key < b.key,
        SortTarget::Version => |a, b| a.version.wrapping_sub(b.version) < 0,
        SortTarget::Create => |a, b| a.create_revision.wrapping_sub(b.create_revision) < 0,
        SortTarget::Mod => |a, b| a.mod_revision.wrapping_sub(b.mod_revision) < 0,
        SortTarget::Value => |a, b| a.value < b.value,
    };
    if descend {
        go_sort(kvs, |a, b| less(b, a));
    } else {
        go_sort(kvs, less);
    }
}

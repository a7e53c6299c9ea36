//! A bbolt (v1.3, the version etcd 3.5 ships) database file, read and written from the format's
//! facts: 16-byte page headers, two meta pages with an FNV-1a checksum, branch and leaf pages with
//! 16-byte elements whose offsets count from the element itself, overflow pages for big nodes, and
//! buckets that are either a root page id or a whole page inlined into the parent's value.
//!
//! The reader walks an image held in memory and never trusts it: every offset is bounds-checked,
//! and a tree deeper than [`MAX_DEPTH`] is refused (a corrupt file could loop). The writer is a bulk
//! loader: keys arrive sorted, leaves are written as they fill, branch levels follow, and the two
//! meta pages go in last, so an exporter can stream a bucket of any size to disk.

use std::io::{Seek, SeekFrom, Write};

use crate::error::SnapshotError;

/// bbolt's magic number, in both meta pages.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version bbolt v1.3 writes.
pub const VERSION: u32 = 2;
/// The page size etcd's files use (bbolt takes the OS page size, 4096 on etcd's platforms).
pub const PAGE_SIZE: usize = 4096;
/// The freelist page id bbolt writes when the freelist is not persisted (`NoFreelistSync`, as etcd
/// opens its backend): readers rebuild the freelist by scanning, so no freelist page exists.
pub const NO_FREELIST: u64 = u64::MAX;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
/// A leaf element whose value is a bucket header (plus an inline page when the root is 0).
const BUCKET_LEAF: u32 = 0x01;

/// Deeper than any B+tree of a real file (a 4 KiB page holds 100+ branch elements).
const MAX_DEPTH: usize = 64;

fn bad(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Format(msg.into())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, SnapshotError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| bad(format!("u16 at {at} past the end")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SnapshotError> {
    let s = b.get(at..at + 4).ok_or_else(|| bad(format!("u32 at {at} past the end")))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, SnapshotError> {
    let s = b.get(at..at + 8).ok_or_else(|| bad(format!("u64 at {at} past the end")))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// FNV-1a, 64 bits: bbolt's meta checksum (Go's `hash/fnv.New64a`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One meta page's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// The high-water mark: pages at or above it are not part of the file's data.
    pub pgid: u64,
    pub txid: u64,
}

/// The meta's fields sit at offset 16 of its page; the checksum covers the 56 bytes before it.
const META_SUMMED: usize = 56;

impl Meta {
    fn parse(page: &[u8]) -> Result<Meta, SnapshotError> {
        let m = page.get(PAGE_HEADER..PAGE_HEADER + META_SUMMED + 8).ok_or_else(|| bad("meta page truncated"))?;
        if u32_at(m, 0)? != MAGIC {
            return Err(bad("meta magic mismatch"));
        }
        if u32_at(m, 4)? != VERSION {
            return Err(bad(format!("meta version {} (want {VERSION})", u32_at(m, 4)?)));
        }
        if u64_at(m, META_SUMMED)? != fnv1a64(&m[..META_SUMMED]) {
            return Err(bad("meta checksum mismatch"));
        }
        Ok(Meta {
            page_size: u32_at(m, 8)?,
            flags: u32_at(m, 12)?,
            root: u64_at(m, 16)?,
            root_sequence: u64_at(m, 24)?,
            freelist: u64_at(m, 32)?,
            pgid: u64_at(m, 40)?,
            txid: u64_at(m, 48)?,
        })
    }

    fn encode(&self, page_id: u64) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_HEADER];
        page[..8].copy_from_slice(&page_id.to_le_bytes());
        page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
        let mut m = Vec::with_capacity(META_SUMMED + 8);
        m.extend_from_slice(&MAGIC.to_le_bytes());
        m.extend_from_slice(&VERSION.to_le_bytes());
        m.extend_from_slice(&self.page_size.to_le_bytes());
        m.extend_from_slice(&self.flags.to_le_bytes());
        m.extend_from_slice(&self.root.to_le_bytes());
        m.extend_from_slice(&self.root_sequence.to_le_bytes());
        m.extend_from_slice(&self.freelist.to_le_bytes());
        m.extend_from_slice(&self.pgid.to_le_bytes());
        m.extend_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        page.extend_from_slice(&m);
        page.resize(self.page_size as usize, 0);
        page
    }
}

/// Where a bucket's tree lives: a page of the file, or a page inlined in its parent's value.
#[derive(Clone, Copy, Debug)]
pub enum BucketRef<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// One entry of a bucket, in key order.
#[derive(Debug)]
pub enum Entry<'a> {
    Value { key: &'a [u8], value: &'a [u8] },
    Bucket { key: &'a [u8], bucket: BucketRef<'a>, sequence: u64 },
}

/// A read-only view of a bbolt image (without etcd's sha256 trailer).
pub struct Reader<'a> {
    data: &'a [u8],
    page_size: usize,
    meta: Meta,
}

impl<'a> Reader<'a> {
    /// Validate the meta pages and take the valid one with the larger txid, as bbolt does on open.
    pub fn new(data: &'a [u8]) -> Result<Self, SnapshotError> {
        // The page size is in the meta itself; meta 0 sits at offset 0 whatever the size, meta 1
        // one page later, so a damaged meta 0 falls back on the usual size to find meta 1.
        let meta0 = data.get(..PAGE_SIZE.min(data.len())).map(Meta::parse).unwrap_or_else(|| Err(bad("empty file")));
        let page_size = match &meta0 {
            Ok(m) => m.page_size as usize,
            Err(_) => PAGE_SIZE,
        };
        if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(bad(format!("page size {page_size}")));
        }
        let meta1 = data.get(page_size..).map(Meta::parse).unwrap_or_else(|| Err(bad("no second meta page")));
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        if meta.page_size as usize != page_size {
            return Err(bad("meta pages disagree on the page size"));
        }
        Ok(Reader { data, page_size, meta })
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    pub fn root(&self) -> BucketRef<'a> {
        BucketRef::Page(self.meta.root)
    }

    /// The bytes of page `id` including its overflow pages.
    fn page(&self, id: u64) -> Result<&'a [u8], SnapshotError> {
        if id < 2 || id >= self.meta.pgid {
            return Err(bad(format!("page {id} outside the data pages (high water {})", self.meta.pgid)));
        }
        let start = (id as usize).checked_mul(self.page_size).ok_or_else(|| bad("page offset overflows"))?;
        let head = self.data.get(start..start + PAGE_HEADER).ok_or_else(|| bad(format!("page {id} past the end")))?;
        let overflow = u32_at(head, 12)? as usize;
        let len = (overflow + 1).checked_mul(self.page_size).ok_or_else(|| bad("overflow too large"))?;
        self.data.get(start..start + len).ok_or_else(|| bad(format!("page {id} (+{overflow}) past the end")))
    }

    /// Find a top-level or nested bucket by its path of names.
    pub fn bucket(&self, path: &[&[u8]]) -> Result<Option<BucketRef<'a>>, SnapshotError> {
        let mut at = self.root();
        for name in path {
            let mut found = None;
            self.for_each(at, &mut |e| {
                if let Entry::Bucket { key, bucket, .. } = e {
                    if key == *name {
                        found = Some(bucket);
                    }
                }
                Ok(())
            })?;
            match found {
                Some(b) => at = b,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Every entry of a bucket in key order. Sub-buckets are reported, not descended into.
    pub fn for_each(
        &self,
        bucket: BucketRef<'a>,
        visit: &mut dyn FnMut(Entry<'a>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        match bucket {
            BucketRef::Page(id) => self.walk(self.page(id)?, 0, visit),
            BucketRef::Inline(page) => {
                if u16_at(page, 8)? & BRANCH_PAGE != 0 {
                    return Err(bad("inline bucket page is a branch"));
                }
                self.walk(page, 0, visit)
            }
        }
    }

    fn walk(
        &self,
        page: &'a [u8],
        depth: usize,
        visit: &mut dyn FnMut(Entry<'a>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        if depth > MAX_DEPTH {
            return Err(bad("tree deeper than any real file (a page cycle?)"));
        }
        let flags = u16_at(page, 8)?;
        let count = u16_at(page, 10)? as usize;
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if flags & BRANCH_PAGE != 0 {
                let child = u64_at(page, at + 8)?;
                self.walk(self.page(child)?, depth + 1, visit)?;
            } else if flags & LEAF_PAGE != 0 {
                let elem_flags = u32_at(page, at)?;
                let pos = at + u32_at(page, at + 4)? as usize;
                let ksize = u32_at(page, at + 8)? as usize;
                let vsize = u32_at(page, at + 12)? as usize;
                let key = page.get(pos..pos + ksize).ok_or_else(|| bad("leaf key past its page"))?;
                let value =
                    page.get(pos + ksize..pos + ksize + vsize).ok_or_else(|| bad("leaf value past its page"))?;
                if elem_flags & BUCKET_LEAF != 0 {
                    if value.len() < BUCKET_HEADER {
                        return Err(bad("bucket value shorter than its header"));
                    }
                    let root = u64_at(value, 0)?;
                    let sequence = u64_at(value, 8)?;
                    let bucket =
                        if root == 0 { BucketRef::Inline(&value[BUCKET_HEADER..]) } else { BucketRef::Page(root) };
                    visit(Entry::Bucket { key, bucket, sequence })?;
                } else {
                    visit(Entry::Value { key, value })?;
                }
            } else {
                return Err(bad(format!("page flags {flags:#x} are neither branch nor leaf")));
            }
        }
        Ok(())
    }
}

/// The value a finished bucket takes in its parent: the 16-byte header, plus the inline page when
/// the bucket was small enough to inline.
#[derive(Clone, Debug)]
pub struct BucketValue(Vec<u8>);

/// Writes a bbolt image to a seekable sink. Pages 0 and 1 are reserved at the start and filled by
/// [`Writer::finish`] once the root bucket's page is known.
pub struct Writer<W: Write + Seek> {
    out: W,
    next_pgid: u64,
}

impl<W: Write + Seek> Writer<W> {
    pub fn new(mut out: W) -> Result<Self, SnapshotError> {
        out.write_all(&[0u8; 2 * PAGE_SIZE]).map_err(|e| SnapshotError::io("write bbolt meta pages", e))?;
        Ok(Writer { out, next_pgid: 2 })
    }

    /// Write one node as a page (plus overflow pages if it is bigger than one); returns its id.
    fn write_page(&mut self, node: &[u8]) -> Result<u64, SnapshotError> {
        let pages = node.len().div_ceil(PAGE_SIZE).max(1);
        let id = self.next_pgid;
        let mut bytes = node.to_vec();
        bytes[..8].copy_from_slice(&id.to_le_bytes());
        let overflow = u32::try_from(pages - 1).map_err(|_| bad("node too large"))?;
        bytes[12..16].copy_from_slice(&overflow.to_le_bytes());
        bytes.resize(pages * PAGE_SIZE, 0);
        self.out.write_all(&bytes).map_err(|e| SnapshotError::io("write bbolt page", e))?;
        self.next_pgid += pages as u64;
        Ok(id)
    }

    /// Write both meta pages over the reserved space and return the sink, positioned at its end.
    /// The freelist is not persisted ([`NO_FREELIST`]), as in etcd's own files.
    pub fn finish(mut self, root: BucketBuilder) -> Result<W, SnapshotError> {
        let root_pgid = root.finish_tree(&mut self)?;
        let mut meta = Meta {
            page_size: PAGE_SIZE as u32,
            flags: 0,
            root: root_pgid,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: self.next_pgid,
            txid: 0,
        };
        let io = |e| SnapshotError::io("write bbolt meta pages", e);
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        // bbolt writes a transaction's meta to page txid % 2; two consecutive txids fill both.
        for page_id in 0..2u64 {
            meta.txid = page_id;
            self.out.write_all(&meta.encode(page_id)).map_err(io)?;
        }
        self.out.seek(SeekFrom::End(0)).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok(self.out)
    }
}

/// One leaf element waiting for its page.
struct LeafElem {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Builds one bucket from entries given in strictly ascending key order. Full leaves go to disk
/// as soon as they fill; a bucket that stays small and has no sub-buckets is inlined in its
/// parent's value as bbolt would do (`maxInlineBucketSize` = a quarter page).
#[derive(Default)]
pub struct BucketBuilder {
    leaf: Vec<LeafElem>,
    leaf_bytes: usize,
    /// (first key, page id) of every leaf already written.
    written: Vec<(Vec<u8>, u64)>,
    last_key: Option<Vec<u8>>,
    has_sub_buckets: bool,
    sequence: u64,
}

impl BucketBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket's sequence counter (`NextSequence`); etcd leaves it at 0.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    pub fn put<W: Write + Seek>(&mut self, w: &mut Writer<W>, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        self.push(w, LeafElem { flags: 0, key: key.to_vec(), value: value.to_vec() })
    }

    pub fn put_bucket<W: Write + Seek>(
        &mut self,
        w: &mut Writer<W>,
        key: &[u8],
        bucket: BucketValue,
    ) -> Result<(), SnapshotError> {
        self.has_sub_buckets = true;
        self.push(w, LeafElem { flags: BUCKET_LEAF, key: key.to_vec(), value: bucket.0 })
    }

    fn push<W: Write + Seek>(&mut self, w: &mut Writer<W>, elem: LeafElem) -> Result<(), SnapshotError> {
        if self.last_key.as_deref().is_some_and(|last| last >= elem.key.as_slice()) {
            return Err(SnapshotError::Unsorted);
        }
        self.last_key = Some(elem.key.clone());
        let size = ELEMENT + elem.key.len() + elem.value.len();
        // Fill a leaf up to one page; an element too big for one page gets a page (and overflow
        // pages) of its own. Leaves of a bucket that may still be inlined stay in memory, which
        // is at most a quarter page.
        if !self.leaf.is_empty() && PAGE_HEADER + self.leaf_bytes + size > PAGE_SIZE {
            self.flush_leaf(w)?;
        }
        self.leaf_bytes += size;
        self.leaf.push(elem);
        Ok(())
    }

    fn flush_leaf<W: Write + Seek>(&mut self, w: &mut Writer<W>) -> Result<(), SnapshotError> {
        let first = match self.leaf.first() {
            Some(e) => e.key.clone(),
            None => return Ok(()),
        };
        let node = leaf_node(&self.leaf)?;
        let id = w.write_page(&node)?;
        self.written.push((first, id));
        self.leaf.clear();
        self.leaf_bytes = 0;
        Ok(())
    }

    /// Finish the bucket and return its value for the parent.
    pub fn finish<W: Write + Seek>(self, w: &mut Writer<W>) -> Result<BucketValue, SnapshotError> {
        let inline_size = PAGE_HEADER + self.leaf_bytes;
        let sequence = self.sequence;
        let mut value = Vec::with_capacity(BUCKET_HEADER);
        if self.written.is_empty() && !self.has_sub_buckets && inline_size <= PAGE_SIZE / 4 {
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&sequence.to_le_bytes());
            value.extend_from_slice(&leaf_node(&self.leaf)?);
        } else {
            let root = self.finish_tree(w)?;
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&sequence.to_le_bytes());
        }
        Ok(BucketValue(value))
    }

    /// Write the remaining leaf and the branch levels above the leaves; returns the root page.
    fn finish_tree<W: Write + Seek>(mut self, w: &mut Writer<W>) -> Result<u64, SnapshotError> {
        if !self.leaf.is_empty() || self.written.is_empty() {
            // An empty bucket still needs a (zero-element) root leaf.
            let first = self.leaf.first().map(|e| e.key.clone()).unwrap_or_default();
            let node = leaf_node(&self.leaf)?;
            let id = w.write_page(&node)?;
            self.written.push((first, id));
        }
        let mut level = self.written;
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut page: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = PAGE_HEADER;
            for (key, id) in level {
                let size = ELEMENT + key.len();
                if !page.is_empty() && bytes + size > PAGE_SIZE {
                    let first = page[0].0.clone();
                    next.push((first, w.write_page(&branch_node(&page)?)?));
                    page.clear();
                    bytes = PAGE_HEADER;
                }
                bytes += size;
                page.push((key, id));
            }
            if !page.is_empty() {
                let first = page[0].0.clone();
                next.push((first, w.write_page(&branch_node(&page)?)?));
            }
            level = next;
        }
        level.first().map(|(_, id)| *id).ok_or_else(|| bad("bucket produced no page"))
    }
}

fn count_u16(n: usize) -> Result<[u8; 2], SnapshotError> {
    u16::try_from(n).map(u16::to_le_bytes).map_err(|_| bad("too many elements for one page"))
}

fn len_u32(n: usize) -> Result<[u8; 4], SnapshotError> {
    u32::try_from(n).map(u32::to_le_bytes).map_err(|_| bad("key or value longer than 4 GiB"))
}

/// A leaf node: header, the element array, then each element's key and value. An element's `pos`
/// counts from the element's own address.
fn leaf_node(elems: &[LeafElem]) -> Result<Vec<u8>, SnapshotError> {
    let mut node = vec![0u8; PAGE_HEADER + elems.len() * ELEMENT];
    node[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
    node[10..12].copy_from_slice(&count_u16(elems.len())?);
    for (i, e) in elems.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = node.len() - at;
        node[at..at + 4].copy_from_slice(&e.flags.to_le_bytes());
        node[at + 4..at + 8].copy_from_slice(&len_u32(pos)?);
        node[at + 8..at + 12].copy_from_slice(&len_u32(e.key.len())?);
        node[at + 12..at + 16].copy_from_slice(&len_u32(e.value.len())?);
        node.extend_from_slice(&e.key);
        node.extend_from_slice(&e.value);
    }
    Ok(node)
}

fn branch_node(children: &[(Vec<u8>, u64)]) -> Result<Vec<u8>, SnapshotError> {
    let mut node = vec![0u8; PAGE_HEADER + children.len() * ELEMENT];
    node[8..10].copy_from_slice(&BRANCH_PAGE.to_le_bytes());
    node[10..12].copy_from_slice(&count_u16(children.len())?);
    for (i, (key, id)) in children.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = node.len() - at;
        node[at..at + 4].copy_from_slice(&len_u32(pos)?);
        node[at + 4..at + 8].copy_from_slice(&len_u32(key.len())?);
        node[at + 8..at + 16].copy_from_slice(&id.to_le_bytes());
        node.extend_from_slice(key);
    }
    Ok(node)
}

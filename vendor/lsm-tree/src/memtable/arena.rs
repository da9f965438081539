// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

//! Patched (Magpie): an arena-allocated skip list for the memtable, in place of
//! `crossbeam_skiplist::SkipMap<InternalKey, UserValue>`.
//!
//! Every entry is one node carved out of large chunks: a small header, its tower of links,
//! then the key and value bytes, copied in. So inserting allocates nothing per entry,
//! comparing touches only the node (no separate key buffer, no `memcmp` call), and dropping
//! a flushed memtable frees a few chunks instead of walking every node again and freeing its
//! node and value buffers one by one. That walk was a burst of CPU and cache misses after
//! each flush, which showed up as latency spikes of everything else on a small machine.
//! Reading an entry out (flush, point reads, ranges) copies its key and value into new
//! `Slice`s, which allocates for those longer than byteview's inline size, where the
//! `SkipMap` bumped a reference count (a cache miss and a write on the value's buffer).
//!
//! Concurrency: one writer at a time (a mutex around the arena), any number of lock-free
//! readers. A node is fully written before a `Release` store links it in, and readers follow
//! links with `Acquire` loads, so a reader that reaches a node sees all of it. Nodes are never
//! moved or freed before the whole list is dropped, and links only ever change from one node
//! to a node inserted later, so a reader standing on any node can always go on.

use crate::key::InternalKey;
use crate::value::{InternalValue, SeqNo};
use crate::{Slice, ValueType};
use std::alloc::Layout;
use std::cmp::Ordering as CmpOrdering;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Tallest tower. With one node in `BRANCHING` promoted per level, 12 levels keep searches
/// logarithmic up to about 4^12 = 16.7 million entries, far more than a memtable holds.
const HEIGHT_MAX: usize = 12;

/// One node in this many of a level also appears on the level above.
const BRANCHING: u64 = 4;

/// Bytes of the first arena chunk; each later one is twice the previous, up to
/// `CHUNK_BYTES_MAX`. Small first chunks keep the many small memtables (most keyspaces get a
/// few writes an hour) from holding a megabyte each.
const CHUNK_BYTES_MIN: usize = 16 * 1024;

/// Bytes of the largest arena chunk.
const CHUNK_BYTES_MAX: usize = 1 << 20;

/// A node needing more than this many bytes gets a chunk of its own, so that it does not
/// abandon the rest of the current chunk.
const NODE_BYTES_SHARED_MAX: usize = CHUNK_BYTES_MIN;

/// Alignment of every node (its header and links hold 8-byte words).
const NODE_ALIGN: usize = 8;

/// A node's fixed part, at the start of its bytes in the arena. It is followed by `height`
/// links (`AtomicPtr<NodeHeader>`), then `key_len` key bytes, then `value_len` value bytes.
#[repr(C)]
struct NodeHeader {
    seqno: SeqNo,
    value_len: u32,
    key_len: u16,
    value_type: u8,
    height: u8,
}

const HEADER_BYTES: usize = std::mem::size_of::<NodeHeader>();
const LINK_BYTES: usize = std::mem::size_of::<AtomicPtr<NodeHeader>>();

/// A linked node of a list that lives for `'a`. A raw pointer rather than a reference to
/// the header, so that reaching the links, key and value past the header keeps the arena
/// chunk's provenance (a `&NodeHeader` would only cover the header's 16 bytes).
#[derive(Clone, Copy)]
struct Node<'a> {
    ptr: NonNull<NodeHeader>,
    list: PhantomData<&'a SkipList>,
}

// SAFETY: a `Node` is a shared reference in all but type: the header, key and value are
// immutable once linked and the links are atomics, so it may cross and be shared between
// threads as `&NodeHeader` could.
unsafe impl Send for Node<'_> {}
// SAFETY: as above.
unsafe impl Sync for Node<'_> {}

impl<'a> Node<'a> {
    /// # Safety
    ///
    /// `ptr` must be a node of a list living for `'a`, written in full by `alloc_node`
    /// before it was published (or still private to the writer that allocated it).
    unsafe fn new(ptr: NonNull<NodeHeader>) -> Self {
        Self {
            ptr,
            list: PhantomData,
        }
    }

    fn header(self) -> &'a NodeHeader {
        // SAFETY: the header was written by `alloc_node` and is never changed afterwards.
        unsafe { self.ptr.as_ref() }
    }

    fn bytes_at(self, offset: usize) -> *const u8 {
        // SAFETY (of the callers' offsets): within the node's allocation, per `alloc_node`.
        unsafe { self.ptr.as_ptr().cast::<u8>().add(offset) }
    }

    fn height(self) -> usize {
        usize::from(self.header().height)
    }

    fn seqno(self) -> SeqNo {
        self.header().seqno
    }

    /// The link of this node at `level` (below its height).
    fn link(self, level: usize) -> &'a AtomicPtr<NodeHeader> {
        debug_assert!(level < self.height());
        // SAFETY: `alloc_node` initialized `height` links right after the header, inside the
        // same allocation, which lives as long as the list.
        unsafe {
            &*self
                .bytes_at(HEADER_BYTES + level * LINK_BYTES)
                .cast::<AtomicPtr<NodeHeader>>()
        }
    }

    fn key(self) -> &'a [u8] {
        let at = HEADER_BYTES + self.height() * LINK_BYTES;
        // SAFETY: `alloc_node` copied `key_len` bytes right after the links.
        unsafe { std::slice::from_raw_parts(self.bytes_at(at), usize::from(self.header().key_len)) }
    }

    fn value(self) -> &'a [u8] {
        let at = HEADER_BYTES + self.height() * LINK_BYTES + usize::from(self.header().key_len);
        // SAFETY: `alloc_node` copied `value_len` bytes right after the key.
        unsafe { std::slice::from_raw_parts(self.bytes_at(at), self.header().value_len as usize) }
    }

    fn value_type(self) -> ValueType {
        // Written from a `ValueType` by `alloc_node`, so the conversion cannot fail.
        ValueType::try_from(self.header().value_type).unwrap_or(ValueType::Value)
    }

    /// Orders this node against the internal key (`key`, `seqno`): by user key ascending,
    /// then by seqno descending, as `InternalKey`'s `Ord` does.
    fn cmp_key(self, key: &[u8], seqno: SeqNo) -> CmpOrdering {
        cmp_bytes(self.key(), key).then_with(|| seqno.cmp(&self.seqno()))
    }

    fn cmp_node(self, other: Node<'_>) -> CmpOrdering {
        self.cmp_key(other.key(), other.seqno())
    }

    fn cmp_internal(self, key: &InternalKey) -> CmpOrdering {
        self.cmp_key(&key.user_key, key.seqno)
    }

    /// A copy of the entry. Keys and values up to byteview's inline size need no allocation.
    fn to_internal_value(self) -> InternalValue {
        InternalValue {
            key: InternalKey {
                user_key: Slice::from(self.key()),
                seqno: self.seqno(),
                value_type: self.value_type(),
            },
            value: Slice::from(self.value()),
        }
    }
}

/// Asks the CPU to start loading the node at `ptr` (which may be null) into the cache. A
/// forward scan (a flush reads the whole memtable so) visits nodes in key order, which is
/// not their order in the arena, so nearly every step is a cache miss; fetching the next
/// node while the caller copies and encodes this one overlaps the two. A prefetch never
/// faults, whatever the address.
#[inline]
fn prefetch(ptr: *const NodeHeader) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is a hint; it reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Lexicographic order of byte strings, as `<[u8]>::cmp`, eight bytes at a time. Keys are
/// short (Magpie's are 8 to 40 bytes), so the call into `memcmp` that the slice comparison
/// makes cost more than the comparison itself on the hot search paths.
fn cmp_bytes(a: &[u8], b: &[u8]) -> CmpOrdering {
    let (mut a, mut b) = (a, b);
    while let (Some((x, a_rest)), Some((y, b_rest))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        let (x, y) = (u64::from_be_bytes(*x), u64::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
        (a, b) = (a_rest, b_rest);
    }
    // Equal so far, and one of them has fewer than 8 bytes left.
    a.cmp(b)
}

/// Chunks that nodes are carved from; freed only when the list is dropped.
struct Arena {
    /// Every chunk with its layout; the one nodes are carved from is the last.
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// Bytes used in the last chunk.
    used: usize,
    /// Size of the next shared chunk: doubles from `CHUNK_BYTES_MIN` up to
    /// `CHUNK_BYTES_MAX`, whatever the sizes of large nodes' own chunks.
    next_chunk_bytes: usize,
}

// SAFETY: the arena owns its chunks outright; the raw pointers are not shared with anything
// that could free them.
unsafe impl Send for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            used: 0,
            next_chunk_bytes: CHUNK_BYTES_MIN,
        }
    }
}

impl Arena {
    fn chunk(size: usize) -> (NonNull<u8>, Layout) {
        #[expect(clippy::expect_used, reason = "a size under isize::MAX with align 8")]
        let layout = Layout::from_size_align(size, NODE_ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size (every node has a header).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout);
        };
        (ptr, layout)
    }

    /// `bytes` (more than 0) of uninitialized memory aligned to `NODE_ALIGN`, valid until the
    /// arena drops.
    fn alloc(&mut self, bytes: usize) -> NonNull<u8> {
        let bytes = bytes.next_multiple_of(NODE_ALIGN);
        if bytes > NODE_BYTES_SHARED_MAX {
            // Its own chunk. Kept before the current one, which stays last; if there is no
            // current one, it goes last as a full chunk, so that the next node starts a new
            // chunk instead of being carved out of this node's bytes.
            let (ptr, layout) = Self::chunk(bytes);
            if let Some(at) = self.chunks.len().checked_sub(1) {
                self.chunks.insert(at, (ptr, layout));
            } else {
                self.chunks.push((ptr, layout));
                self.used = layout.size();
            }
            return ptr;
        }
        let room = self
            .chunks
            .last()
            .map_or(0, |(_, layout)| layout.size() - self.used);
        if room < bytes {
            let size = self.next_chunk_bytes.clamp(CHUNK_BYTES_MIN, CHUNK_BYTES_MAX);
            self.next_chunk_bytes = (size * 2).min(CHUNK_BYTES_MAX);
            self.chunks.push(Self::chunk(size));
            self.used = 0;
        }
        #[expect(clippy::expect_used, reason = "a chunk was pushed above if none was")]
        let (chunk, _) = self.chunks.last().expect("a chunk");
        // SAFETY: `used + bytes` is within the chunk (checked above, or a fresh chunk of at
        // least `CHUNK_BYTES_MIN` >= `NODE_BYTES_SHARED_MAX` >= `bytes`).
        let ptr = unsafe { chunk.add(self.used) };
        self.used += bytes;
        ptr
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for (ptr, layout) in self.chunks.drain(..) {
            // SAFETY: allocated by `chunk` with this layout and never freed before.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

/// What only the writer touches.
struct WriterState {
    arena: Arena,
    /// xorshift state for tower heights.
    rng: u64,
}

impl WriterState {
    fn random_height(&mut self) -> usize {
        let mut height = 1;
        loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            if height == HEIGHT_MAX || self.rng % BRANCHING != 0 {
                return height;
            }
            height += 1;
        }
    }

    /// A new node with null links, not yet linked anywhere.
    fn alloc_node(
        &mut self,
        height: usize,
        key: &[u8],
        seqno: SeqNo,
        value_type: ValueType,
        value: &[u8],
    ) -> NonNull<NodeHeader> {
        #[expect(clippy::expect_used, reason = "InternalKey::new limits keys to 64 KiB")]
        let key_len = u16::try_from(key.len()).expect("key fits u16");
        #[expect(clippy::expect_used, reason = "values are limited to 32-bit length")]
        let value_len = u32::try_from(value.len()).expect("value fits u32");
        #[expect(clippy::expect_used, reason = "height is at most HEIGHT_MAX")]
        let height_u8 = u8::try_from(height).expect("height fits u8");
        let bytes = HEADER_BYTES + height * LINK_BYTES + key.len() + value.len();
        let ptr = self.arena.alloc(bytes);
        // SAFETY: `ptr` points to `bytes` fresh bytes aligned for `NodeHeader` and its links;
        // each part is written once, at its offset, before the node is linked anywhere.
        unsafe {
            ptr.cast::<NodeHeader>().as_ptr().write(NodeHeader {
                seqno,
                value_len,
                key_len,
                value_type: u8::from(value_type),
                height: height_u8,
            });
            let links = ptr
                .as_ptr()
                .add(HEADER_BYTES)
                .cast::<AtomicPtr<NodeHeader>>();
            for level in 0..height {
                links.add(level).write(AtomicPtr::new(std::ptr::null_mut()));
            }
            let key_at = ptr.as_ptr().add(HEADER_BYTES + height * LINK_BYTES);
            std::ptr::copy_nonoverlapping(key.as_ptr(), key_at, key.len());
            std::ptr::copy_nonoverlapping(value.as_ptr(), key_at.add(key.len()), value.len());
        }
        ptr.cast::<NodeHeader>()
    }
}

/// The skip list. Entries are ordered like `InternalKey`; an entry with the same user key
/// and seqno as an existing one replaces it (as `crossbeam_skiplist::SkipMap::insert` did:
/// a fjall batch gives all its items one seqno, and the last write of a key must win).
pub struct SkipList {
    /// The head's links, one per level.
    head: [AtomicPtr<NodeHeader>; HEIGHT_MAX],
    /// Levels in use (at least 1); only grows.
    height: AtomicUsize,
    /// Entries reachable on level 0.
    len: AtomicUsize,
    /// The arena and the height generator, behind the writer lock.
    writer: Mutex<WriterState>,
}

impl Default for SkipList {
    fn default() -> Self {
        Self {
            head: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            writer: Mutex::new(WriterState {
                arena: Arena::default(),
                rng: 0x9E37_79B9_7F4A_7C15,
            }),
        }
    }
}

impl SkipList {
    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True if the list holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The link at `level` of `node`, or of the head for `None`.
    fn link<'a>(&'a self, node: Option<Node<'a>>, level: usize) -> &'a AtomicPtr<NodeHeader> {
        match node {
            Some(n) => n.link(level),
            #[expect(clippy::indexing_slicing, reason = "levels are below HEIGHT_MAX")]
            None => &self.head[level],
        }
    }

    fn load<'a>(&'a self, node: Option<Node<'a>>, level: usize) -> Option<Node<'a>> {
        let ptr = NonNull::new(self.link(node, level).load(Ordering::Acquire))?;
        // SAFETY: a non-null link points to a node of this list's arena, written in full
        // before the `Release` store that linked it, which this `Acquire` load saw.
        Some(unsafe { Node::new(ptr) })
    }

    /// The last node for which `before` holds (`None`: the head), where `before` holds for
    /// a prefix of the list. `preds`, if given, receives that node for every level.
    fn last_before<'a>(
        &'a self,
        before: impl Fn(Node<'a>) -> bool,
        mut preds: Option<&mut [Option<Node<'a>>; HEIGHT_MAX]>,
    ) -> Option<Node<'a>> {
        let height = self.height.load(Ordering::Acquire);
        let mut x: Option<Node<'a>> = None;
        for level in (0..HEIGHT_MAX).rev() {
            if level < height {
                while let Some(next) = self.load(x, level) {
                    if !before(next) {
                        break;
                    }
                    x = Some(next);
                }
            }
            if let Some(p) = preds.as_deref_mut() {
                #[expect(clippy::indexing_slicing, reason = "levels are below HEIGHT_MAX")]
                {
                    p[level] = x;
                }
            }
        }
        x
    }

    /// Inserts an entry, or replaces the one with the same user key and seqno.
    pub fn insert(&self, key: &[u8], seqno: SeqNo, value_type: ValueType, value: &[u8]) {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut preds: [Option<Node<'_>>; HEIGHT_MAX] = [None; HEIGHT_MAX];
        let pred0 = self.last_before(
            |n| n.cmp_key(key, seqno) == CmpOrdering::Less,
            Some(&mut preds),
        );
        let existing = self
            .load(pred0, 0)
            .filter(|n| n.cmp_key(key, seqno) == CmpOrdering::Equal);
        let height = existing.map_or_else(|| writer.random_height(), Node::height);
        let node_ptr = writer.alloc_node(height, key, seqno, value_type, value);
        // SAFETY: written in full by `alloc_node`; its arena lives as long as the list.
        let node = unsafe { Node::new(node_ptr) };
        for (level, pred) in preds.iter().enumerate().take(height) {
            // Before the node is published, so no reader can see it half-linked. A
            // replaced node's successors are the new node's; otherwise the predecessor's.
            let next = match existing {
                Some(old) => old.link(level).load(Ordering::Acquire),
                None => self.link(*pred, level).load(Ordering::Acquire),
            };
            node.link(level).store(next, Ordering::Relaxed);
        }
        for (level, pred) in preds.iter().enumerate().take(height) {
            // Bottom up: once reachable on any level, the node is reachable on level 0.
            self.link(*pred, level)
                .store(node_ptr.as_ptr(), Ordering::Release);
        }
        if height > self.height.load(Ordering::Relaxed) {
            // After the head's links on the new levels are set.
            self.height.store(height, Ordering::Release);
        }
        if existing.is_none() {
            self.len.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The entries within `range`, in order, from either end.
    pub fn range<R: RangeBounds<InternalKey>>(&self, range: R) -> Iter<'_, R> {
        Iter {
            list: self,
            range,
            front_last: None,
            back_last: None,
            front_started: false,
            done: false,
        }
    }
}

/// A double-ended iterator over a range of a [`SkipList`]. Entries inserted while it runs
/// may or may not be seen; none is seen twice, and the two ends never cross.
pub struct Iter<'a, R> {
    list: &'a SkipList,
    range: R,
    /// The last node returned from the front.
    front_last: Option<Node<'a>>,
    /// The last node returned from the back.
    back_last: Option<Node<'a>>,
    front_started: bool,
    /// The two ends met, or one ran out of the range.
    done: bool,
}

impl<R: RangeBounds<InternalKey>> Iter<'_, R> {
    fn after_start(&self, n: Node<'_>) -> bool {
        match self.range.start_bound() {
            Bound::Included(k) => n.cmp_internal(k) != CmpOrdering::Less,
            Bound::Excluded(k) => n.cmp_internal(k) == CmpOrdering::Greater,
            Bound::Unbounded => true,
        }
    }

    fn before_end(&self, n: Node<'_>) -> bool {
        match self.range.end_bound() {
            Bound::Included(k) => n.cmp_internal(k) != CmpOrdering::Greater,
            Bound::Excluded(k) => n.cmp_internal(k) == CmpOrdering::Less,
            Bound::Unbounded => true,
        }
    }
}

impl<R: RangeBounds<InternalKey>> Iterator for Iter<'_, R> {
    type Item = InternalValue;

    fn next(&mut self) -> Option<InternalValue> {
        if self.done {
            return None;
        }
        let candidate = if self.front_started {
            self.front_last.and_then(|n| self.list.load(Some(n), 0))
        } else {
            self.front_started = true;
            let pred = self.list.last_before(|n| !self.after_start(n), None);
            // Patched (Magpie): a node inserted after `pred` was found, and still before the
            // start, is the next node now; step over such nodes rather than return them. CI
            // caught a key below the range coming out of a range read that raced an insert.
            let mut first = self.list.load(pred, 0);
            while let Some(n) = first.filter(|n| !self.after_start(*n)) {
                first = self.list.load(Some(n), 0);
            }
            first
        };
        let node = candidate.filter(|n| {
            self.before_end(*n)
                && self
                    .back_last
                    .is_none_or(|b| n.cmp_node(b) == CmpOrdering::Less)
        });
        let Some(node) = node else {
            self.done = true;
            return None;
        };
        self.front_last = Some(node);
        prefetch(node.link(0).load(Ordering::Relaxed));
        Some(node.to_internal_value())
    }
}

impl<R: RangeBounds<InternalKey>> DoubleEndedIterator for Iter<'_, R> {
    fn next_back(&mut self) -> Option<InternalValue> {
        if self.done {
            return None;
        }
        let candidate = match self.back_last {
            Some(b) => self
                .list
                .last_before(|n| n.cmp_node(b) == CmpOrdering::Less, None),
            None => self.list.last_before(|n| self.before_end(n), None),
        };
        let node = candidate.filter(|n| {
            self.after_start(*n)
                && self
                    .front_last
                    .is_none_or(|f| n.cmp_node(f) == CmpOrdering::Greater)
        });
        let Some(node) = node else {
            self.done = true;
            return None;
        };
        self.back_last = Some(node);
        Some(node.to_internal_value())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// The model: `InternalKey` order, last insert of a (key, seqno) wins.
    type Model = BTreeMap<InternalKey, (ValueType, Vec<u8>)>;

    fn ikey(key: &[u8], seqno: SeqNo) -> InternalKey {
        InternalKey::new(key.to_vec(), seqno, ValueType::Value)
    }

    fn entries(it: impl Iterator<Item = InternalValue>) -> Vec<(Vec<u8>, SeqNo, Vec<u8>)> {
        it.map(|v| (v.key.user_key.to_vec(), v.key.seqno, v.value.to_vec()))
            .collect()
    }

    fn model_entries<'a>(
        it: impl Iterator<Item = (&'a InternalKey, &'a (ValueType, Vec<u8>))>,
    ) -> Vec<(Vec<u8>, SeqNo, Vec<u8>)> {
        it.map(|(k, (_, v))| (k.user_key.to_vec(), k.seqno, v.clone()))
            .collect()
    }

    /// A small deterministic generator, so failures reproduce.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Keys of 4 to 12 bytes, sharing prefixes of 8 bytes, so that both the word-wise and
    /// the bytewise parts of `cmp_bytes` decide orders.
    fn key_of(n: u64) -> Vec<u8> {
        let mut key = vec![0xA0, 0, 0, 0, 0, 0, 0, (n % 3) as u8];
        key.extend_from_slice(format!("{}", n / 3).as_bytes());
        key.truncate(4 + (n % 9) as usize);
        key
    }

    fn fill(list: &SkipList, model: &mut Model, g: &mut Gen, n: usize) {
        for _ in 0..n {
            let key = key_of(g.below(200));
            let seqno = g.below(8);
            let vt = match g.below(8) {
                0 => ValueType::Tombstone,
                1 => ValueType::WeakTombstone,
                2 => ValueType::Indirection,
                _ => ValueType::Value,
            };
            // Values of every size class: empty, inline in a Slice, on the heap. (Larger
            // than a chunk: `a_node_larger_than_a_chunk_gets_its_own`.)
            let len = match g.below(50) {
                0 => 0,
                n if n < 25 => (n % 20) as usize,
                n => (n * 13) as usize,
            };
            let value: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seqno as u8)).collect();
            list.insert(&key, seqno, vt, &value);
            model.insert(ikey(&key, seqno), (vt, value));
        }
    }

    #[test]
    fn matches_an_ordered_map_forwards_backwards_and_in_ranges() {
        for seed in 1..=4u64 {
            let mut g = Gen(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
            let list = SkipList::default();
            let mut model = Model::new();
            fill(&list, &mut model, &mut g, 1_500);
            assert_eq!(list.len(), model.len(), "seed {seed}");
            assert_eq!(entries(list.range(..)), model_entries(model.iter()));
            assert_eq!(
                entries(list.range(..).rev()),
                model_entries(model.iter().rev())
            );
            // Value types survive.
            for (v, (k, (vt, _))) in list.range(..).zip(model.iter()) {
                assert_eq!(&v.key, k);
                assert_eq!(v.key.value_type, *vt);
            }
            for _ in 0..100 {
                let a = ikey(&key_of(g.below(210)), g.below(9));
                let b = ikey(&key_of(g.below(210)), g.below(9));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let bounds = [
                    (Bound::Included(lo.clone()), Bound::Included(hi.clone())),
                    (Bound::Excluded(lo.clone()), Bound::Excluded(hi.clone())),
                    (Bound::Included(lo.clone()), Bound::Unbounded),
                    (Bound::Unbounded, Bound::Excluded(hi.clone())),
                ];
                for bound in bounds {
                    if matches!(&bound, (Bound::Excluded(l), Bound::Excluded(h)) if l == h) {
                        continue; // BTreeMap panics on an empty excluded range
                    }
                    let want = model_entries(model.range(bound.clone()));
                    assert_eq!(entries(list.range(bound.clone())), want);
                    let mut back = entries(list.range(bound.clone()).rev());
                    back.reverse();
                    assert_eq!(back, want);
                    // Both ends at once meet in the middle without repeating an entry.
                    let mut it = list.range(bound.clone());
                    let (mut front, mut tail) = (Vec::new(), Vec::new());
                    loop {
                        let step = if g.below(2) == 0 {
                            it.next().map(|v| front.push(v))
                        } else {
                            it.next_back().map(|v| tail.push(v))
                        };
                        if step.is_none() {
                            break;
                        }
                    }
                    tail.reverse();
                    front.extend(tail);
                    assert_eq!(entries(front.into_iter()), want);
                }
            }
        }
    }

    #[test]
    fn byte_order_matches_slice_order() {
        let mut g = Gen(99);
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..300 {
            let len = g.below(20) as usize;
            // Few distinct bytes, so that long common prefixes are frequent.
            strings.push(
                (0..len)
                    .map(|_| [0u8, 1, 0x7f, 0x80, 0xff][g.below(5) as usize])
                    .collect(),
            );
        }
        for a in &strings {
            for b in &strings {
                assert_eq!(cmp_bytes(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn arena_regions_are_aligned_inside_one_chunk_and_disjoint() {
        let mut g = Gen(5);
        let mut sizes = vec![
            NODE_BYTES_SHARED_MAX * 3,
            40,
            NODE_BYTES_SHARED_MAX,
            NODE_BYTES_SHARED_MAX + 1,
            24,
            CHUNK_BYTES_MIN - 24,
            8,
        ];
        sizes.extend((0..3000).map(|_| match g.below(20) {
            0 => NODE_BYTES_SHARED_MAX + g.below(40_000) as usize,
            _ => 1 + g.below(600) as usize,
        }));
        let mut arena = Arena::default();
        let mut regions: Vec<(usize, usize)> = sizes
            .iter()
            .map(|&size| (arena.alloc(size).as_ptr() as usize, size))
            .collect();
        for &(at, size) in &regions {
            assert_eq!(at % NODE_ALIGN, 0, "aligned");
            let inside = arena
                .chunks
                .iter()
                .filter(|(c, l)| {
                    let c = c.as_ptr() as usize;
                    at >= c && at + size <= c + l.size()
                })
                .count();
            assert_eq!(inside, 1, "inside exactly one chunk");
        }
        regions.sort_unstable();
        for pair in regions.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "disjoint");
        }
        // Shared chunks grow from the minimum, whatever the large nodes' chunks are.
        let shared: Vec<usize> = arena
            .chunks
            .iter()
            .map(|(_, l)| l.size())
            .filter(|&s| s <= CHUNK_BYTES_MAX && s.is_power_of_two())
            .collect();
        assert!(shared.contains(&CHUNK_BYTES_MIN));
    }

    #[test]
    fn large_nodes_first_or_between_keep_their_bytes() {
        // A large node as the very first allocation, and others between small ones: no node
        // may be carved out of another's bytes.
        let list = SkipList::default();
        let big = |n: u8| vec![n; NODE_BYTES_SHARED_MAX * 3 + usize::from(n)];
        let mut model = BTreeMap::new();
        for i in 0u16..3000 {
            let value = if i % 700 == 0 {
                big((i / 700) as u8)
            } else {
                i.to_le_bytes().repeat(5)
            };
            list.insert(&i.to_be_bytes(), 1, ValueType::Value, &value);
            model.insert(i, value);
        }
        let got: Vec<InternalValue> = list.range(..).collect();
        assert_eq!(got.len(), model.len());
        for (v, (k, want)) in got.iter().zip(model.iter()) {
            assert_eq!(*v.key.user_key, k.to_be_bytes());
            assert!(*v.value == **want, "value of key {k} intact");
        }
    }

    #[test]
    fn a_node_larger_than_a_chunk_gets_its_own() {
        let list = SkipList::default();
        let big: Vec<u8> = (0..CHUNK_BYTES_MAX + 17).map(|i| (i % 251) as u8).collect();
        list.insert(b"a", 1, ValueType::Value, b"small");
        list.insert(b"b", 1, ValueType::Value, &big);
        list.insert(b"c", 1, ValueType::Tombstone, b"");
        list.insert(b"a", 1, ValueType::Value, b"replaced");
        let got: Vec<InternalValue> = list.range(..).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(list.len(), 3, "a replacement is not a new entry");
        assert_eq!(&*got[0].value, b"replaced");
        assert!(*got[1].value == *big, "the large value round-trips");
        assert_eq!(got[2].key.value_type, ValueType::Tombstone);
    }

    #[test]
    fn empty_lists_and_reversed_ranges_yield_nothing() {
        let list = SkipList::default();
        assert_eq!(list.range(..).count(), 0);
        assert_eq!(list.range(..).next_back().map(|v| v.key), None);
        list.insert(b"m", 5, ValueType::Value, b"v");
        let (lo, hi) = (ikey(b"a", 1), ikey(b"z", 1));
        assert_eq!(list.range(hi.clone()..=lo.clone()).count(), 0);
        assert_eq!(list.range(hi..lo).next_back().map(|v| v.key), None);
        // The same key at a lower seqno sorts after it; at a higher one, before it.
        assert_eq!(list.range(ikey(b"m", 6)..=ikey(b"m", 4)).count(), 1);
        assert_eq!(list.range(ikey(b"m", 4)..).count(), 0);
    }

    #[test]
    fn readers_see_every_finished_insert_while_a_writer_inserts_and_replaces() {
        const INSERTS: u64 = 30_000;
        let list = Arc::new(SkipList::default());
        // Inserts finished so far; entry `i` has key `i % 4000` and seqno `i`.
        let finished = Arc::new(AtomicUsize::new(0));
        let value = |seqno: u64, version: u8| {
            let mut v = seqno.to_le_bytes().to_vec();
            v.push(version);
            v
        };
        let writer = {
            let (list, finished) = (list.clone(), finished.clone());
            std::thread::spawn(move || {
                let mut g = Gen(7);
                for i in 0..INSERTS {
                    list.insert(&(i % 4000).to_be_bytes(), i, ValueType::Value, &value(i, 0));
                    finished.store(i as usize + 1, Ordering::Release);
                    // Replace an earlier entry now and then, while readers stand on it.
                    if i > 0 && g.below(4) == 0 {
                        let j = g.below(i);
                        list.insert(&(j % 4000).to_be_bytes(), j, ValueType::Value, &value(j, 1));
                    }
                }
            })
        };
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (list, finished) = (list.clone(), finished.clone());
                std::thread::spawn(move || {
                    let mut g = Gen(11 + r);
                    let mut rounds = 0;
                    loop {
                        let done = finished.load(Ordering::Acquire) as u64;
                        // The whole list, from the front or the back: every finished insert
                        // must be there, once, in order, with one of its values.
                        let all: Vec<InternalValue> = if r == 0 {
                            list.range(..).collect()
                        } else {
                            let mut v: Vec<_> = list.range(..).rev().collect();
                            v.reverse();
                            v
                        };
                        for pair in all.windows(2) {
                            assert!(pair[0].key < pair[1].key, "sorted, no repeats");
                        }
                        let mut seen = vec![false; INSERTS as usize];
                        for v in &all {
                            let seqno = v.key.seqno;
                            assert!(
                                *v.value == *value(seqno, 0) || *v.value == *value(seqno, 1),
                                "a whole value of its own entry"
                            );
                            seen[seqno as usize] = true;
                        }
                        assert!(
                            seen[..done as usize].iter().all(|s| *s),
                            "every insert finished before the scan is seen"
                        );
                        // A random range, taken from both ends at random.
                        let a = ikey(&g.below(4000).to_be_bytes(), g.below(INSERTS));
                        let b = ikey(&g.below(4000).to_be_bytes(), g.below(INSERTS));
                        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                        let mut it = list.range(lo.clone()..=hi.clone());
                        let (mut front, mut back): (Vec<InternalValue>, Vec<InternalValue>) =
                            (Vec::new(), Vec::new());
                        loop {
                            let got = if g.below(2) == 0 {
                                it.next().map(|v| front.push(v))
                            } else {
                                it.next_back().map(|v| back.push(v))
                            };
                            if got.is_none() {
                                break;
                            }
                        }
                        back.reverse();
                        front.extend(back);
                        for v in &front {
                            assert!(v.key >= lo && v.key <= hi, "within the range");
                        }
                        for pair in front.windows(2) {
                            assert!(pair[0].key < pair[1].key, "the ends never cross");
                        }
                        rounds += 1;
                        if done == INSERTS && rounds >= 20 {
                            return rounds;
                        }
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            assert!(r.join().unwrap() >= 20);
        }
        assert_eq!(list.range(..).count(), INSERTS as usize);
        assert_eq!(list.len(), INSERTS as usize);
    }
}

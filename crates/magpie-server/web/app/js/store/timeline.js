// The visible window of one conversation: server messages merged by seq (deduplicated, in
// order) from history pages, the tracker's live stream and our own `sent` answers.
//
// Bounded: at most `cap` messages are kept (and so rendered). Live messages push the oldest
// out (they can be paged back in); scrolling far back pushes the newest out, which detaches
// the window from the live end until the user jumps back to the latest messages.

export class Timeline {
  constructor(id, cap) {
    this.id = id;
    this.cap = Math.max(cap, 10);
    /** Messages sorted by seq. */
    this.msgs = [];
    /** The seqs in `msgs`. */
    this.seqs = new Set();
    /** Whether the newest page has been fetched (the window reaches the live end). */
    this.loaded = false;
    /** Whether older messages exist before `msgs[0]`. */
    this.hasOlder = false;
    /** False after scrolling back pushed the newest messages out. */
    this.atLatest = true;
    /** Set when live messages arrived while detached from the live end. */
    this.newerAvailable = false;
    /** Whether a history request is in flight (set by the client). */
    this.loading = false;
    /** Bumped on every change (renderers compare it). */
    this.version = 0;
    /** Bumped by `clear()`: a history answer requested before it is for a window that is gone. */
    this.epoch = 0;
  }

  newestSeq() {
    return this.msgs.length ? this.msgs[this.msgs.length - 1].seq : 0;
  }

  oldestSeq() {
    return this.msgs.length ? this.msgs[0].seq : 0;
  }

  /** Inserts `m` in seq order unless present. Returns whether it was new. */
  insert(m) {
    if (this.seqs.has(m.seq)) return false;
    let lo = 0;
    let hi = this.msgs.length;
    if (hi === 0 || this.msgs[hi - 1].seq < m.seq) lo = hi; // the common case: append
    else {
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.msgs[mid].seq < m.seq) lo = mid + 1;
        else hi = mid;
      }
    }
    this.msgs.splice(lo, 0, m);
    this.seqs.add(m.seq);
    return true;
  }

  dropOldest(n) {
    for (const m of this.msgs.splice(0, n)) this.seqs.delete(m.seq);
  }

  dropNewest(n) {
    for (const m of this.msgs.splice(this.msgs.length - n, n)) this.seqs.delete(m.seq);
  }

  /** A message from the live stream. Returns whether the window changed. */
  addLive(m) {
    // Never opened: nothing to keep (opening fetches the newest page). While that first page
    // is being fetched, live messages are kept so none falls between the page and the stream.
    if (!this.loaded && !this.loading) return false;
    if (!this.atLatest) {
      this.newerAvailable = true;
      this.version++;
      return true;
    }
    if (!this.insert(m)) return false;
    if (this.msgs.length > this.cap) {
      this.dropOldest(this.msgs.length - this.cap);
      this.hasOlder = true;
    }
    this.version++;
    return true;
  }

  /** The newest page (`full`: it had `limit` messages, so older ones may exist). */
  loadLatest(page, full) {
    const last = page.length ? page[page.length - 1].seq : 0;
    // Live messages newer than the page follow it directly (the live stream is gap-free).
    const newer = this.atLatest ? this.msgs.filter((m) => m.seq > last) : [];
    this.msgs = [];
    this.seqs.clear();
    for (const m of page) this.insert(m);
    for (const m of newer) this.insert(m);
    if (this.msgs.length > this.cap) this.dropOldest(this.msgs.length - this.cap);
    this.hasOlder = full || page.length > this.cap;
    this.loaded = true;
    this.atLatest = true;
    this.newerAvailable = false;
    this.version++;
  }

  /**
   * A page from before the window's oldest message, requested with `before_seq = before`.
   * Returns false, changing nothing, if the window's oldest message is no longer `before`: live
   * messages pushed it out meanwhile, and the page would leave a hole above it.
   */
  addOlder(page, full, before = this.oldestSeq()) {
    if (this.msgs.length && this.oldestSeq() !== before) return false;
    for (const m of page) this.insert(m);
    this.hasOlder = full;
    if (this.msgs.length > this.cap) {
      this.dropNewest(this.msgs.length - this.cap);
      this.atLatest = false;
    }
    this.version++;
    return true;
  }

  /** Forgets everything (the member left, or the window must be reloaded). */
  clear() {
    this.msgs = [];
    this.seqs.clear();
    this.epoch++;
    this.loading = false;
    this.loaded = false;
    this.hasOlder = false;
    this.atLatest = true;
    this.newerAvailable = false;
    this.version++;
  }
}

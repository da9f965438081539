// One ordered message stream per conversation over both fan-out paths (a port of the SDK's
// ConversationTracker; same rules, same names).
//
// Messages reach the client as inbox `message` events (direct chats, write-fan-out groups),
// as `notify` frames that only say "this conversation now reaches seq N" (read-fan-out
// groups, answered by pulls), and through the conversation list fetched after a reconnect.
// The conversation timeline (gap-free `seq`) is the truth: the tracker hands every message
// out exactly once and in seq order, holds early ones until the gap before them is pulled,
// and tells the caller which pulls to send. It does no I/O.
//
// Where a stream starts: a conversation seeded with `restore` continues after that seq; an
// unknown one first seen through an inbox message starts at that message; one first seen any
// other way (group_joined, notify, a read-fan-out catch-up row) is pulled from the beginning.

/** Effects of one input: messages to show (ordered per conversation) and pulls to send. */
function effects() {
  return { messages: [], pulls: [] };
}

function merge(into, fx) {
  into.messages.push(...fx.messages);
  into.pulls.push(...fx.pulls);
}

/** The state of one conversation. */
class Conv {
  constructor() {
    /** Last seq handed out; null until the stream's start is known. */
    this.delivered = null;
    /** Highest seq known to exist. */
    this.knownLast = 0;
    /** Messages after `delivered` waiting for a gap to be filled, sorted by seq. */
    this.pending = [];
    /** The pull in flight: {after, limit, sentAt}, at most one. */
    this.pull = null;
    /** Logical time of the last activity (eviction order). */
    this.touched = 0;
  }

  behind() {
    return this.pending.length > 0 || this.knownLast > (this.delivered ?? 0);
  }

  busy() {
    return this.pending.length > 0 || this.pull !== null;
  }

  /** Holds `m` until the messages before it are known (bounded by `cap`). */
  buffer(m, cap) {
    if (this.delivered !== null && m.seq <= this.delivered) return;
    let lo = 0;
    let hi = this.pending.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.pending[mid].seq < m.seq) lo = mid + 1;
      else hi = mid;
    }
    if (lo < this.pending.length && this.pending[lo].seq === m.seq) return;
    if (this.pending.length >= Math.max(cap, 1)) {
      // Drop the newest; `knownLast` keeps it wanted, so a pull fetches it again.
      if (lo === this.pending.length) return;
      this.pending.pop();
    }
    this.pending.splice(lo, 0, m);
  }

  /** Hands out every held message that directly follows `delivered`. */
  drain(out) {
    if (this.delivered === null) return;
    let d = this.delivered;
    while (this.pending.length > 0) {
      const seq = this.pending[0].seq;
      if (seq <= d) this.pending.shift();
      else if (seq === d + 1) {
        out.push(this.pending.shift());
        d = seq;
      } else break;
    }
    this.delivered = d;
    this.knownLast = Math.max(this.knownLast, d);
  }
}

export class Tracker {
  constructor({ pendingMax = 1024, conversationsMax = 10_000, pullPage = 200, pullTimeoutMs = 15_000 } = {}) {
    /** @type {Map<string, Conv>} */
    this.convs = new Map();
    this.limits = { pendingMax, conversationsMax, pullPage, pullTimeoutMs };
    this.tick = 0;
  }

  /** Everything up to `delivered` in `id` was handled before (e.g. shown by history). */
  restore(id, delivered) {
    const c = this.entry(id);
    if (c.delivered === null || c.delivered < delivered) {
      c.delivered = delivered;
      c.knownLast = Math.max(c.knownLast, delivered);
    }
  }

  delivered(id) {
    return this.convs.get(id)?.delivered ?? null;
  }

  /** An inbox `message` event (write fan-out). */
  onMessage(m, now) {
    const c = this.entry(m.conversation_id);
    if (c.delivered === null && c.pull === null) c.delivered = Math.max(m.seq - 1, 0);
    c.knownLast = Math.max(c.knownLast, m.seq);
    c.buffer(m, this.limits.pendingMax);
    return this.settle(m.conversation_id, now);
  }

  /** A `notify` frame: the conversation's timeline reaches `lastSeq`. */
  onNotify(id, lastSeq, now) {
    const c = this.entry(id);
    c.knownLast = Math.max(c.knownLast, lastSeq);
    return this.settle(id, now);
  }

  /** `group_joined`: the stream starts at the first message the server shows this member. */
  onJoined(id, now) {
    const c = this.entry(id);
    if (c.delivered !== null || c.pull !== null) return effects();
    const limit = this.limits.pullPage;
    c.pull = { after: 0, limit, sentAt: now };
    return { messages: [], pulls: [{ conversation_id: id, after_seq: 0, limit }] };
  }

  /** `group_left`: forget the conversation. */
  onLeft(id) {
    this.convs.delete(id);
  }

  /**
   * The server refused a frame about `id` (an `error` naming `conversation_id`). `forbidden`
   * means we are no longer a member: stop pulling it now rather than re-issuing the pull on
   * every timeout (the `group_left` event follows in the inbox). Anything else is left to the
   * pull timeout.
   */
  onRefused(id, code) {
    if (code === 'forbidden') this.onLeft(id);
    return effects();
  }

  /**
   * The answer to a pull: visible messages after the pull's `after_seq`, ascending.
   * `truncated`: the server cut the page at its byte budget, so more follow although it is short.
   */
  onPulled(id, messages, now, truncated = false) {
    const c = this.convs.get(id);
    if (!c) return effects(); // left or forgotten meanwhile
    const flight = c.pull;
    const lowest = messages.reduce((lo, m) => Math.min(lo, m.seq), Infinity);
    if (flight && lowest <= flight.after) {
      // The answer to an earlier pull (one that timed out and was issued again) arriving while
      // a later one is in flight: every answer lists only messages after its own pull's
      // after_seq. Taken for the answer in flight it would end that pull, its real answer
      // would look unsolicited, and the catch-up would stop. Keep what it adds; keep waiting.
      const fx = effects();
      const delivered = c.delivered ?? 0;
      for (const m of messages) {
        if (m.conversation_id !== id || m.seq <= delivered) continue;
        c.buffer(m, this.limits.pendingMax);
        c.drain(fx.messages);
      }
      return fx;
    }
    c.pull = null;
    const after = flight ? flight.after : (c.delivered ?? 0);
    const limit = flight ? flight.limit : this.limits.pullPage;
    const full = truncated || messages.length >= limit;
    const before = c.delivered;
    const seen = new Set();
    const fresh = messages
      .filter((m) => m.conversation_id === id && m.seq > after)
      .sort((a, b) => a.seq - b.seq)
      .filter((m) => (seen.has(m.seq) ? false : (seen.add(m.seq), true)));
    const base = Math.max(c.delivered ?? after, after);
    const firstNew = fresh.find((m) => m.seq > base);
    if (firstNew) {
      // The answer lists every visible message after `after`, so nothing between `base` and
      // its first new message is visible (e.g. sent before this member joined).
      const first = c.pending.length ? Math.min(c.pending[0].seq, firstNew.seq) : firstNew.seq;
      if (c.delivered === null || first > c.delivered + 1) c.delivered = first - 1;
    }
    if (fresh.length) c.knownLast = Math.max(c.knownLast, fresh[fresh.length - 1].seq);
    const fx = effects();
    for (const m of fresh) {
      c.buffer(m, this.limits.pendingMax);
      c.drain(fx.messages);
    }
    const progressed = c.delivered !== before;
    const delivered = c.delivered ?? 0;
    if (full && delivered > after) {
      // A full page: more may follow; stay behind until an answer comes back short.
      c.knownLast = Math.max(c.knownLast, delivered + 1);
    } else if (!progressed && c.pending.length) {
      // The server has nothing between `delivered` and the held messages: skip that range.
      const first = c.pending[0].seq;
      if (c.delivered !== null && first > c.delivered + 1) {
        console.warn(`tracker: ${id} seqs ${c.delivered + 1}..${first - 1} could not be fetched`);
      }
      c.delivered = first - 1;
      c.drain(fx.messages);
    } else if (!progressed) {
      c.knownLast = delivered; // caught up as far as the server says
    }
    merge(fx, this.settle(id, now));
    return fx;
  }

  /**
   * The conversation list after a (re)connect: pull what it shows beyond what was delivered.
   * Unknown write-fan-out rows are left to the inbox replay; unknown read-fan-out ones are
   * pulled from the beginning.
   */
  onCatchUp(rows, now) {
    const fx = effects();
    for (const row of rows) {
      const known = this.convs.has(row.conversation_id);
      if (!known && (row.fanout === 'write' || row.last_seq === 0)) continue;
      const c = this.entry(row.conversation_id);
      c.knownLast = Math.max(c.knownLast, row.last_seq);
      merge(fx, this.settle(row.conversation_id, now));
    }
    return fx;
  }

  /** The connection dropped: unanswered pulls will never be answered. */
  onDisconnected() {
    for (const c of this.convs.values()) c.pull = null;
  }

  /** A connection is up: pull whatever is known to be missing. */
  onConnected(now) {
    const fx = effects();
    for (const [id, c] of this.convs) {
      if (c.behind() && c.pull === null) merge(fx, this.settle(id, now));
    }
    return fx;
  }

  /** Re-issues pulls unanswered for too long. */
  pollTimeouts(now) {
    const fx = effects();
    for (const [id, c] of this.convs) {
      if (c.pull && c.pull.sentAt + this.limits.pullTimeoutMs <= now) {
        c.pull = null;
        if (!c.behind() && c.delivered === null) c.knownLast = Math.max(c.knownLast, 1);
        merge(fx, this.settle(id, now));
      }
    }
    return fx;
  }

  /** Hands out what can be handed out and issues the missing pull, if any. */
  settle(id, now) {
    const fx = effects();
    const c = this.convs.get(id);
    if (!c) return fx;
    c.drain(fx.messages);
    if (c.pull === null && c.behind()) {
      const after = c.delivered ?? 0;
      const limit = this.limits.pullPage;
      c.pull = { after, limit, sentAt: now };
      fx.pulls.push({ conversation_id: id, after_seq: after, limit });
    }
    return fx;
  }

  /** The state of `id`, created (evicting the least recently active idle one) if needed. */
  entry(id) {
    this.tick += 1;
    let c = this.convs.get(id);
    if (!c) {
      if (this.convs.size >= Math.max(this.limits.conversationsMax, 1)) this.evictOne();
      c = new Conv();
      this.convs.set(id, c);
    }
    c.touched = this.tick;
    return c;
  }

  evictOne() {
    let victim = null;
    for (const [id, c] of this.convs) {
      const key = [c.busy() ? 1 : 0, c.touched];
      if (!victim || key[0] < victim.key[0] || (key[0] === victim.key[0] && key[1] < victim.key[1])) {
        victim = { id, key };
      }
    }
    if (victim) this.convs.delete(victim.id);
  }
}

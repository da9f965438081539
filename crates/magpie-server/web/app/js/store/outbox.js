// Our unanswered sends. Each has a client_msg_id chosen once: a re-send after a reconnect
// and a manual retry reuse it, so the server stores the message at most once and answers a
// repeat with `duplicate: true` and the original seq.
//
// States: `pending` (queued or written, waiting for `sent`) and `failed` (refused, or no
// answer within the send timeout; retried only when the user asks).
//
// With a `storage`, the entries are saved after every change and restored by the next page
// load of the same device, so a reload (or a closed tab reopened with its session) re-sends
// what was never answered, with the same ids: nothing typed is lost and nothing is doubled.

let lastMsgId = 0n;

/**
 * A fresh client message id: "z" and 32 hex digits, the time in milliseconds (48 bits) then 80
 * random bits, greater than every id this page generated before (the scheme of the Rust SDK,
 * like UUIDv7). The server keeps each sender's greatest id, so a send with a greater one is new
 * for certain and needs no search of its dedup index. The "z" sorts above the ids of earlier
 * versions ("w-" and random hex), so users who sent with those get that too.
 */
export function newClientMsgId() {
  const b = new Uint8Array(10);
  crypto.getRandomValues(b);
  let random = 0n;
  for (const x of b) random = (random << 8n) | BigInt(x);
  const fresh = ((BigInt(Date.now()) & 0xffffffffffffn) << 80n) | random;
  lastMsgId = fresh > lastMsgId ? fresh : lastMsgId + 1n;
  return `z${lastMsgId.toString(16).padStart(32, '0')}`;
}

export class Outbox {
  /**
   * @param {{load(): unknown, save(list: object[]): void} | null} storage keeps the entries
   *   across page loads (`null`: memory only)
   * @param {number} now the clock of `since` (restored entries get a fresh send timeout)
   */
  constructor(storage = null, now = 0) {
    /** @type {Map<string, object>} in send order */
    this.entries = new Map();
    this.storage = storage;
    const saved = storage?.load();
    for (const s of Array.isArray(saved) ? saved : []) {
      if (!s || typeof s.client_msg_id !== 'string' || typeof s.conversation_id !== 'string' || typeof s.text !== 'string') continue;
      const failed = s.state === 'failed';
      this.entries.set(s.client_msg_id, {
        client_msg_id: s.client_msg_id,
        conversation_id: s.conversation_id,
        text: s.text,
        state: failed ? 'failed' : 'pending',
        written: false,
        since: now,
        ts_ms: Number.isFinite(s.ts_ms) ? s.ts_ms : Date.now(),
        error: failed ? String(s.error || 'Not sent.') : null,
      });
    }
  }

  /** Writes the entries to the storage (what a later page load needs, nothing more). */
  save() {
    if (!this.storage) return;
    const list = [...this.entries.values()].map(({ client_msg_id, conversation_id, text, state, ts_ms, error }) => ({
      client_msg_id, conversation_id, text, state, ts_ms, error,
    }));
    this.storage.save(list);
  }

  /** Queues `text` for `conversationId`; returns the entry. */
  add(conversationId, text, now) {
    const e = {
      client_msg_id: newClientMsgId(),
      conversation_id: conversationId,
      text,
      state: 'pending',
      written: false,
      since: now,
      ts_ms: Date.now(),
      error: null,
    };
    this.entries.set(e.client_msg_id, e);
    this.save();
    return e;
  }

  get(id) {
    return this.entries.get(id);
  }

  forConversation(conversationId) {
    return [...this.entries.values()].filter((e) => e.conversation_id === conversationId);
  }

  /** Pending entries not yet written on the current connection, in send order. */
  /**
   * Pending entries not written on this connection and not held back after a refusal (`now`),
   * in order. A held entry also holds back the later ones of its conversation, so that a
   * refusal does not let later messages overtake it (those already written may still have).
   */
  unwritten(now = Infinity) {
    const held = new Set();
    const out = [];
    for (const e of this.entries.values()) {
      if (e.state !== 'pending' || e.written || held.has(e.conversation_id)) continue;
      if (e.notBefore > now) held.add(e.conversation_id);
      else out.push(e);
    }
    return out;
  }

  /**
   * The server refused `id` for now (rate_limited, unavailable, internal): hold it back until
   * `notBefore(n)`, where `n` counts its refusals so far, and remember the reason. Returns `n`
   * (0 if `id` is not pending).
   */
  refused(id, notBefore, reason) {
    const e = this.entries.get(id);
    if (!e) return 0;
    e.written = false;
    e.refusals = (e.refusals || 0) + 1;
    e.notBefore = notBefore(e.refusals);
    e.lastError = reason;
    return e.refusals;
  }

  /** The earliest time a held-back entry may be written again, or null. */
  nextHold() {
    let t = null;
    for (const e of this.entries.values()) {
      if (e.state === 'pending' && !e.written && e.notBefore && (t === null || e.notBefore < t)) t = e.notBefore;
    }
    return t;
  }

  markWritten(id) {
    const e = this.entries.get(id);
    if (e) e.written = true;
  }

  /** The connection dropped: every pending entry must be written again. */
  resetWritten() {
    for (const e of this.entries.values()) e.written = false;
  }

  /** The server stored it: removes and returns the entry (undefined if unknown). */
  complete(id) {
    const e = this.entries.get(id);
    if (this.entries.delete(id)) this.save();
    return e;
  }

  fail(id, error) {
    const e = this.entries.get(id);
    if (e) {
      e.state = 'failed';
      e.written = false;
      e.error = error;
      this.save();
    }
    return e;
  }

  /** Makes a failed (or pending) entry pending again with a fresh timeout; same id. */
  retry(id, now) {
    const e = this.entries.get(id);
    if (!e) return null;
    e.state = 'pending';
    e.written = false;
    e.since = now;
    e.error = null;
    // A retry the user asked for starts afresh.
    e.refusals = 0;
    e.notBefore = 0;
    e.lastError = null;
    this.save();
    return e;
  }

  /** Marks pending entries older than `timeoutMs` failed; returns them. */
  expire(now, timeoutMs) {
    const out = [];
    for (const e of this.entries.values()) {
      if (e.state === 'pending' && e.since + timeoutMs <= now) {
        e.state = 'failed';
        e.written = false;
        e.error = e.lastError || 'No answer from the server.';
        out.push(e);
      }
    }
    if (out.length) this.save();
    return out;
  }

  /** The earliest time a pending entry times out, or null. */
  nextDeadline(timeoutMs) {
    let t = null;
    for (const e of this.entries.values()) {
      if (e.state === 'pending' && (t === null || e.since + timeoutMs < t)) t = e.since + timeoutMs;
    }
    return t;
  }

  /** Drops the failed entries of the conversations for which `gone(conversationId)` holds. */
  dropFailedOf(gone) {
    let dropped = false;
    for (const [id, e] of this.entries) {
      if (e.state === 'failed' && gone(e.conversation_id)) dropped = this.entries.delete(id) || dropped;
    }
    if (dropped) this.save();
  }

  /**
   * Marks a conversation's pending entries failed with `error` (the user left it, or an old
   * `group_left` is replayed after a reload). They are kept, not dropped: a re-join (or the
   * replayed `group_joined` that follows) shows them with a retry, and a retry with the same
   * id answers `duplicate` if the message was stored after all.
   */
  failConversation(conversationId, error) {
    let changed = false;
    for (const e of this.entries.values()) {
      if (e.conversation_id === conversationId && e.state === 'pending') {
        e.state = 'failed';
        e.written = false;
        e.error = error;
        changed = true;
      }
    }
    if (changed) this.save();
  }
}

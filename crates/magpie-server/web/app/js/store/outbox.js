// Our unanswered sends. Each has a client_msg_id chosen once: a re-send after a reconnect
// and a manual retry reuse it, so the server stores the message at most once and answers a
// repeat with `duplicate: true` and the original seq.
//
// States: `pending` (queued or written, waiting for `sent`) and `failed` (refused, or no
// answer within the send timeout; retried only when the user asks).

/** A fresh random client message id: "w-" and 32 hex digits. */
export function newClientMsgId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return `w-${Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')}`;
}

export class Outbox {
  constructor() {
    /** @type {Map<string, object>} in send order */
    this.entries = new Map();
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
    return e;
  }

  get(id) {
    return this.entries.get(id);
  }

  forConversation(conversationId) {
    return [...this.entries.values()].filter((e) => e.conversation_id === conversationId);
  }

  /** Pending entries not yet written on the current connection, in send order. */
  unwritten() {
    return [...this.entries.values()].filter((e) => e.state === 'pending' && !e.written);
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
    this.entries.delete(id);
    return e;
  }

  fail(id, error) {
    const e = this.entries.get(id);
    if (e) {
      e.state = 'failed';
      e.written = false;
      e.error = error;
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
    return e;
  }

  /** Marks pending entries older than `timeoutMs` failed; returns them. */
  expire(now, timeoutMs) {
    const out = [];
    for (const e of this.entries.values()) {
      if (e.state === 'pending' && e.since + timeoutMs <= now) {
        e.state = 'failed';
        e.written = false;
        e.error = 'No answer from the server.';
        out.push(e);
      }
    }
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

  /** Drops every entry of a conversation (the user left it). */
  dropConversation(conversationId) {
    for (const [id, e] of this.entries) if (e.conversation_id === conversationId) this.entries.delete(id);
  }
}

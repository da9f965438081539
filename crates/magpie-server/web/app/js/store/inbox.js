// Exactly-once, in-order delivery of inbox events (port of the SDK's Sequencer/accept_live).
//
// The inbox is gap-free (cursors 1, 2, 3, ...), but events arrive through paths that can
// overlap: the `sync` replay after (re)connecting and live pushes. An event at or below the
// last delivered cursor is a duplicate and dropped; an event that skips ahead reveals a gap,
// which is filled from `GET /v1/sync` (page by page) before the event itself is delivered.

export class Inbox {
  /**
   * @param {number} last the last cursor already processed (0 for none)
   * @param {(after: number) => Promise<object[]>} fetchAfter one page of events with cursor > after
   * @param {(event: object) => void} deliver hands one event to the application
   */
  constructor(last, fetchAfter, deliver) {
    this.last = last;
    this.fetchAfter = fetchAfter;
    this.deliver = deliver;
  }

  /** Accepts one pushed event. Callers must not run two `accept`s at once. */
  async accept(event) {
    const target = event.cursor;
    if (!Number.isSafeInteger(target) || target <= this.last) return; // duplicate
    // A gap: everything the HTTP answer lists after `last` exists and is deliverable, even
    // beyond `target`.
    while (this.last + 1 < target) {
      const before = this.last;
      const page = await this.fetchAfter(before);
      for (const e of page) {
        if (e.cursor > this.last) {
          this.deliver(e);
          this.last = e.cursor;
        }
      }
      if (this.last === before) {
        console.warn(`inbox: cursors ${before + 1}..${target - 1} could not be fetched; skipped`);
        break;
      }
    }
    if (target > this.last) {
      this.deliver(event);
      this.last = target;
    }
  }
}

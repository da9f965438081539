// A tiny change notifier. Producers call `changed(topic)` as often as they like; listeners run
// once per topic per turn of the event loop, so a burst (an inbox replay, a history page)
// costs one re-render, not one per item.

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
    /** @type {Set<string>} */
    this.dirty = new Set();
    this.scheduled = false;
  }

  /** Subscribes `fn` to `topic`; returns the unsubscribe function. */
  on(topic, fn) {
    if (!this.listeners.has(topic)) this.listeners.set(topic, new Set());
    this.listeners.get(topic).add(fn);
    return () => this.listeners.get(topic)?.delete(fn);
  }

  /** Marks `topic` changed; listeners run soon, once. */
  changed(topic) {
    this.dirty.add(topic);
    if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(() => this.flush(), 0);
    }
  }

  flush() {
    this.scheduled = false;
    const topics = [...this.dirty];
    this.dirty.clear();
    for (const t of topics) {
      for (const fn of this.listeners.get(t) || []) {
        try {
          fn(t);
        } catch (e) {
          console.error('listener failed', t, e);
        }
      }
    }
  }
}

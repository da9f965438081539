// Usernames by user id, fetched on demand (`GET /v1/users/{id}`) and cached for the session.

export class Users {
  /**
   * @param {object} api the HTTP client
   * @param {() => void} onChange called after names arrived
   */
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    /** @type {Map<string, string>} */
    this.names = new Map();
    /** Ids being fetched or failed (not asked again). */
    this.asked = new Set();
  }

  set(id, name) {
    if (id && name && this.names.get(id) !== name) {
      this.names.set(id, name);
      this.onChange();
    }
  }

  /** The cached name, or null (and a fetch is started). */
  name(id) {
    const n = this.names.get(id);
    if (n !== undefined) return n;
    this.fetch(id);
    return null;
  }

  /** The name, or a placeholder while it loads. */
  label(id) {
    return this.name(id) ?? `user ${id}`;
  }

  fetch(id) {
    if (!id || this.asked.has(id)) return;
    this.asked.add(id);
    this.api.user(id).then(
      (u) => this.set(u.user_id, u.username),
      () => {
        // Forget the failure after a while so a transient error is retried.
        setTimeout(() => this.asked.delete(id), 10_000);
      },
    );
  }
}

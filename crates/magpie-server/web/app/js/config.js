// Tunables of the client. Tests (and curious developers) may override any of them by storing
// a JSON object under localStorage["magpie.config"], e.g. {"sendTimeoutMs": 1500}.

const DEFAULTS = {
  /** First reconnect delay bound (ms); doubles per failed attempt, full jitter. */
  backoffBaseMs: 250,
  /** Largest reconnect delay (ms). */
  backoffCapMs: 30_000,
  /** A connection that stayed up this long resets the backoff (ms). */
  stableConnectionMs: 10_000,
  /** A send with no `sent` answer after this long is shown as failed (ms). */
  sendTimeoutMs: 15_000,
  /** Delay before re-sending after a transient refusal such as rate_limited (ms). */
  transientRetryMs: 1_000,
  /** Messages kept per conversation (and so in the DOM). */
  messagesPerConversationMax: 500,
  /** History page size (the server allows 1–200). */
  historyPage: 50,
  /** Pull page size for read-fan-out catch-up (the server's maximum). */
  pullPage: 200,
  /** An unanswered pull is issued again after this long (ms). */
  pullTimeoutMs: 15_000,
  /** Inbox events fetched per HTTP gap fill. */
  syncPage: 200,
  /** Processed events are acked (and the cursor persisted) at most this often (ms). */
  ackDebounceMs: 300,
  /** How long a typing notice stays visible (ms). */
  typingShowMs: 4_000,
  /** Our own typing frames are sent at most this often (ms). */
  typingSendEveryMs: 2_500,
};

function overrides() {
  try {
    const raw = localStorage.getItem('magpie.config');
    const parsed = raw ? JSON.parse(raw) : {};
    return parsed && typeof parsed === 'object' ? parsed : {};
  } catch {
    return {};
  }
}

/** The effective configuration (defaults plus numeric overrides). */
export const config = Object.freeze(
  Object.fromEntries(
    Object.entries(DEFAULTS).map(([k, v]) => {
      const o = overrides()[k];
      return [k, typeof o === 'number' && Number.isFinite(o) && o >= 0 ? o : v];
    }),
  ),
);

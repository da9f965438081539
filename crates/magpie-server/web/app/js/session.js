// Where the login lives. Each browser tab is its own device: the token, user and device ids
// are kept in sessionStorage (per tab), so two tabs log in separately and behave as two
// devices. The inbox cursor and the unsent messages are kept in localStorage keyed by user
// and device, so they survive a reload of the tab and never mix two devices.

const SESSION_KEY = 'magpie.session';

/** The stored session `{token, user_id, device_id, username}`, or null. */
export function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    return s && s.token && s.user_id && s.device_id ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(s) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

export function clearSession() {
  const s = loadSession();
  sessionStorage.removeItem(SESSION_KEY);
  if (s) {
    localStorage.removeItem(cursorKey(s));
    localStorage.removeItem(outboxKey(s));
  }
}

function outboxKey(s) {
  return `magpie.outbox.${s.user_id}.${s.device_id}`;
}

/** Where this device's unsent messages are kept between page loads (see `Outbox`). */
export function outboxStorage(s) {
  return {
    load() {
      try {
        return JSON.parse(localStorage.getItem(outboxKey(s)) || '[]');
      } catch {
        return [];
      }
    },
    save(list) {
      try {
        if (list.length) localStorage.setItem(outboxKey(s), JSON.stringify(list));
        else localStorage.removeItem(outboxKey(s));
      } catch {
        // Storage full or disabled: unsent messages then live in this page only.
      }
    },
  };
}

function cursorKey(s) {
  return `magpie.cursor.${s.user_id}.${s.device_id}`;
}

/** The last inbox cursor this device processed, or null if none was stored. */
export function loadCursor(s) {
  const v = Number(localStorage.getItem(cursorKey(s)));
  return Number.isSafeInteger(v) && v > 0 ? v : null;
}

export function saveCursor(s, cursor) {
  try {
    localStorage.setItem(cursorKey(s), String(cursor));
  } catch {
    // Storage full or disabled: the server's record (the `ack`) is the fallback.
  }
}

/** A short device label from the user agent, e.g. "Web · Chrome on Linux". */
export function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua)
    ? 'Firefox'
    : /Edg\//.test(ua)
      ? 'Edge'
      : /Chrom(e|ium)\//.test(ua)
        ? 'Chrome'
        : /Safari\//.test(ua)
          ? 'Safari'
          : 'Browser';
  const os = /Android/.test(ua)
    ? 'Android'
    : /iPhone|iPad/.test(ua)
      ? 'iOS'
      : /Mac OS X/.test(ua)
        ? 'macOS'
        : /Windows/.test(ua)
          ? 'Windows'
          : /Linux/.test(ua)
            ? 'Linux'
            : '';
  return `Web · ${browser}${os ? ` on ${os}` : ''}`;
}

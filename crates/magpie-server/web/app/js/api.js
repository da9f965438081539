// The HTTP half of the public protocol (docs/protocol.md). Every call returns the parsed JSON
// body or throws an ApiError carrying the server's `{"error":{"code","message"}}`.

/** A refused or failed request. `status` is 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

/**
 * An API client. `getToken()` supplies the bearer token; `onUnauthorized()` is called when an
 * authenticated request answers 401 (the session was revoked).
 */
export function createApi({ getToken = () => null, onUnauthorized = () => {} } = {}) {
  async function call(method, path, body, { auth = true } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const token = auth ? getToken() : null;
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached.');
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      if (res.status === 401 && token) onUnauthorized();
      throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
    }
    return data;
  }

  return {
    // Accounts and sessions.
    register: (username, password) =>
      call('POST', '/v1/accounts', { username, password }, { auth: false }),
    login: (username, password, device_name) =>
      call('POST', '/v1/sessions', { username, password, device_name }, { auth: false }),
    logout: () => call('DELETE', '/v1/sessions/current'),
    user: (id) => call('GET', `/v1/users/${enc(id)}`),
    userByName: (name) => call('GET', `/v1/users?username=${enc(name)}`),

    // Conversations and messages.
    conversations: () => call('GET', '/v1/conversations'),
    openDirect: (peer_id) => call('POST', '/v1/conversations/direct', { peer_id }),
    /** `opts`: {after_seq} | {before_seq} | {} (newest), plus `limit`. */
    history: (id, opts = {}) => {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(opts)) if (v !== undefined && v !== null) q.set(k, v);
      return call('GET', `/v1/conversations/${enc(id)}/messages?${q}`);
    },
    sync: (cursor, limit) => call('GET', `/v1/sync?cursor=${cursor}&limit=${limit}`),
    read: (id, seq) => call('POST', `/v1/conversations/${enc(id)}/read`, { seq }),
    receipts: (id, seq) => call('GET', `/v1/conversations/${enc(id)}/receipts?seq=${seq}`),
    setMuted: (id, muted) => call('PUT', `/v1/conversations/${enc(id)}/settings`, { muted }),

    // Friends and presence.
    friends: () => call('GET', '/v1/friends'),
    friendRequests: () => call('GET', '/v1/friends/requests'),
    requestFriend: (user_id, message) =>
      call('POST', '/v1/friends/requests', message ? { user_id, message } : { user_id }),
    acceptRequest: (id) => call('POST', `/v1/friends/requests/${enc(id)}/accept`),
    declineRequest: (id) => call('POST', `/v1/friends/requests/${enc(id)}/decline`),
    removeFriend: (id) => call('DELETE', `/v1/friends/${enc(id)}`),

    // Groups.
    createGroup: (name, member_ids) => call('POST', '/v1/groups', { name, member_ids }),
    group: (id) => call('GET', `/v1/groups/${enc(id)}`),
    members: (id, after) =>
      call('GET', `/v1/groups/${enc(id)}/members?limit=1000${after ? `&after=${enc(after)}` : ''}`),
    addMembers: (id, user_ids) => call('POST', `/v1/groups/${enc(id)}/members`, { user_ids }),
    removeMember: (id, user_id) => call('DELETE', `/v1/groups/${enc(id)}/members/${enc(user_id)}`),
    renameGroup: (id, name) => call('PATCH', `/v1/groups/${enc(id)}`, { name }),
  };
}

/** A human sentence for an error, for toasts and inline messages. */
export function describeError(e) {
  if (!(e instanceof ApiError)) return 'Something went wrong.';
  switch (e.code) {
    case 'network':
      return 'The server cannot be reached. Check your connection.';
    case 'unauthorized':
      return 'Wrong username or password.';
    case 'username_taken':
      return 'That username is taken.';
    case 'not_found':
      return 'No such user.';
    case 'not_friends':
      return 'You can only message friends.';
    case 'already_friends':
      return 'You are already friends.';
    case 'forbidden':
      return 'You are not allowed to do that.';
    case 'group_full':
      return 'The group is full.';
    case 'rate_limited':
      return 'Slow down a little and try again.';
    case 'unavailable':
      return 'The server cannot take messages right now. Try again shortly.';
    case 'internal':
      return 'The server had a problem. Try again.';
    default:
      return e.message || 'Something went wrong.';
  }
}

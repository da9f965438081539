// Test setup over the public HTTP API (fast paths for what a test does not need to click
// through: accounts, friendships and bulk messages).

import assert from 'node:assert/strict';

import { PASSWORD } from './ui.js';

export async function call(server, method, path, { token, body } = {}) {
  const r = await fetch(`${server.url}${path}`, {
    method,
    headers: {
      ...(body ? { 'Content-Type': 'application/json' } : {}),
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path} → ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Registers and logs in `username`; returns `{token, user_id, device_id}`. */
export async function account(server, username) {
  await call(server, 'POST', '/v1/accounts', { body: { username, password: PASSWORD } });
  return call(server, 'POST', '/v1/sessions', { body: { username, password: PASSWORD, device_name: 'e2e setup' } });
}

/** Makes `a` and `b` friends; returns their direct conversation id. */
export async function befriend(server, a, b) {
  const { request_id } = await call(server, 'POST', '/v1/friends/requests', { token: a.token, body: { user_id: b.user_id } });
  const { conversation_id } = await call(server, 'POST', `/v1/friends/requests/${request_id}/accept`, { token: b.token });
  return conversation_id;
}

/** Sends `texts` into a conversation over HTTP, in order. */
export async function sendAll(server, who, conversationId, texts) {
  for (const [i, text] of texts.entries()) {
    await call(server, 'POST', `/v1/conversations/${conversationId}/messages`, {
      token: who.token,
      body: { client_msg_id: `setup-${Date.now()}-${i}`, text },
    });
  }
}

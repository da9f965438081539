// How messages read: system messages as sentences, list previews, and the element of one
// chat message (text, sender, time, delivery state, retry).

import { formatFull, formatTime, h } from './dom.js';

/** A list of names: "a", "a and b", "a, b and c". */
function names(client, ids) {
  const n = (ids || []).map((id) => (id === client.me ? 'you' : client.users.label(id)));
  if (n.length <= 1) return n.join('');
  return `${n.slice(0, -1).join(', ')} and ${n[n.length - 1]}`;
}

function who(client, id) {
  return id === client.me ? 'You' : client.users.label(id);
}

/** The sentence for a system message (group changes). */
export function systemText(client, m) {
  const s = m.system || {};
  switch (s.action) {
    case 'group_created': {
      const others = (s.user_ids || []).filter((u) => u !== s.actor_id);
      return `${who(client, s.actor_id)} created the group “${s.name}”${others.length ? ` with ${names(client, others)}` : ''}`;
    }
    case 'members_added':
      return `${who(client, s.actor_id)} added ${names(client, s.user_ids)}`;
    case 'member_removed':
      return `${who(client, s.actor_id)} removed ${names(client, [s.user_id])}`;
    case 'member_left':
      return `${who(client, s.user_id)} left the group`;
    case 'role_changed':
      return s.role === 'admin'
        ? `${who(client, s.actor_id)} made ${names(client, [s.user_id])} an admin`
        : `${who(client, s.actor_id)} made ${names(client, [s.user_id])} a member`;
    case 'renamed':
      return `${who(client, s.actor_id)} renamed the group to “${s.name}”`;
    case 'owner_changed':
      return `${who(client, s.user_id)} ${s.user_id === client.me ? 'are' : 'is'} now the owner`;
    default:
      return 'The group changed';
  }
}

/** The one-line preview of a conversation's last message. */
export function previewText(client, c) {
  const m = c.last_message;
  if (!m) return '';
  if (m.kind === 'system') return systemText(client, m);
  const text = m.text.replace(/\s+/g, ' ').slice(0, 120);
  if (m.sender_id === client.me) return `You: ${text}`;
  if (c.kind === 'group') return `${client.users.label(m.sender_id)}: ${text}`;
  return text;
}

/**
 * The element of one message. `item`: `{m, own, pending, showSender}` where `pending` is an
 * outbox entry (state pending/failed) for a message not stored yet.
 */
export function messageElement(client, item, actions) {
  const { m, own, pending, showSender } = item;
  if (m.kind === 'system') {
    return h('li', { class: 'msg msg-system', dataset: { seq: String(m.seq), kind: 'system' } },
      h('span', { class: 'msg-text', text: systemText(client, m) }),
    );
  }
  const state = pending ? pending.state : 'sent';
  const meta = h('span', { class: 'msg-meta' },
    h('time', { text: formatTime(m.ts_ms), title: formatFull(m.ts_ms), attrs: { datetime: new Date(m.ts_ms).toISOString() } }),
  );
  if (own) {
    if (state === 'sent') {
      meta.append(h('span', { class: 'msg-state state-sent', title: 'Sent' }, h('span', { text: '✓', attrs: { 'aria-hidden': 'true' } }), h('span', { class: 'sr-only', text: 'sent' })));
    } else {
      meta.append(h('span', { class: `msg-state state-${state}`, text: state === 'pending' ? 'Sending…' : 'Not sent' }));
    }
  }
  const li = h('li', {
    class: `msg ${own ? 'msg-own' : 'msg-other'} ${state !== 'sent' ? `msg-${state}` : ''}`.trim(),
    dataset: { seq: m.seq ? String(m.seq) : '', kind: 'text', state, cmid: m.client_msg_id, sender: m.sender_id },
  },
    showSender && !own ? h('span', { class: 'msg-sender', text: client.users.label(m.sender_id) }) : null,
    h('div', { class: 'bubble' }, h('span', { class: 'msg-text', text: m.text }), meta),
  );
  if (state === 'failed') {
    const retry = h('button', {
      class: 'btn-link msg-retry', type: 'button', text: 'Retry',
      dataset: { focusKey: 'retry' },
      attrs: { 'aria-label': `Retry sending: ${m.text.slice(0, 40)}` },
    });
    retry.addEventListener('click', () => actions.retry(m.client_msg_id));
    const discard = h('button', {
      class: 'btn-link msg-discard', type: 'button', text: 'Delete',
      attrs: { 'aria-label': `Delete unsent message: ${m.text.slice(0, 40)}` },
    });
    discard.addEventListener('click', () => actions.discard(m.client_msg_id));
    li.append(h('div', { class: 'msg-failed-bar', attrs: { role: 'alert' } },
      h('span', { text: pending.error || 'Not sent.' }), retry, discard));
  }
  return li;
}

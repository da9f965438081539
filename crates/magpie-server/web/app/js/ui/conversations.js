// The conversation list: most recent first, with unread badges, a preview of the last
// message, presence dots for friends and a muted marker. Arrow keys move between rows.

import { avatar, formatTime, h, reconcile } from './dom.js';
import { openCreateGroup } from './groups.js';
import { previewText } from './messages.js';

export function mountConversations(panel, app) {
  const { client } = app;
  const newGroup = h('button', { class: 'btn btn-secondary', type: 'button', text: 'New group', id: 'new-group' });
  newGroup.addEventListener('click', () => openCreateGroup(app));
  const list = h('ul', { class: 'conv-list', id: 'conv-list', attrs: { 'aria-label': 'Conversations' } });
  const empty = h('p', { class: 'empty', id: 'conv-empty', text: 'No conversations yet. Add friends under People, or create a group.' });
  panel.append(h('div', { class: 'panel-actions' }, newGroup), list, empty);

  function row(c) {
    const title = client.title(c);
    const direct = c.kind === 'direct';
    const friend = direct ? client.friends.get(c.peer_id) : null;
    const online = !!friend?.online;
    const preview = previewText(client, c);
    const unread = c.unread_count || 0;
    const label = [
      title,
      direct ? (friend ? (online ? 'online' : 'offline') : null) : `group, ${c.member_count} members`,
      c.muted ? 'muted' : null,
      unread ? `${unread} unread` : null,
      preview ? `last message: ${preview}` : null,
    ].filter(Boolean).join(', ');
    const av = h('span', { class: 'avatar-wrap' }, avatar(title, direct ? '' : 'avatar-group'));
    if (direct && friend) av.append(h('span', { class: `presence ${online ? 'on' : 'off'}`, dataset: { online: String(online) } }));
    const btn = h('button', {
      class: 'conv',
      type: 'button',
      dataset: { convId: c.conversation_id, kind: c.kind, unread: String(unread) },
      attrs: { 'aria-label': label, 'aria-current': c.conversation_id === client.openId ? 'true' : null },
    },
      av,
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-top' },
          h('span', { class: 'conv-name', text: title }),
          c.muted ? h('span', { class: 'muted-mark', title: 'Muted', text: 'muted' }) : null,
          h('time', { class: 'conv-time', text: formatTime(c.last_message?.ts_ms) }),
        ),
        h('span', { class: 'conv-bottom' },
          h('span', { class: 'conv-preview', text: preview || (direct ? 'Say hello' : 'No messages yet') }),
          unread ? h('span', { class: `badge${c.muted ? ' badge-muted' : ''}`, text: unread > 99 ? '99+' : String(unread) }) : null,
        ),
      ),
    );
    btn.addEventListener('click', () => app.openConversation(c.conversation_id));
    return h('li', {}, btn);
  }

  const cache = new Map();
  function render() {
    const rows = client.sortedConversations();
    reconcile(list, rows.map((c) => ({
      key: c.conversation_id,
      // Everything a row shows; an unchanged row keeps its element (focus, pending clicks).
      sig: JSON.stringify([
        client.title(c), c.kind, c.member_count, c.muted, c.unread_count, c.last_seq,
        previewText(client, c), client.friends.get(c.peer_id)?.online, !!client.friends.get(c.peer_id),
        c.conversation_id === client.openId,
      ]),
      build: () => row(c),
    })), cache);
    empty.hidden = rows.length > 0;
  }

  list.addEventListener('keydown', (ev) => {
    if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
    const buttons = [...list.querySelectorAll('.conv')];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    ev.preventDefault();
    buttons[Math.min(Math.max(i + (ev.key === 'ArrowDown' ? 1 : -1), 0), buttons.length - 1)].focus();
  });

  for (const t of ['conversations', 'users', 'friends', 'open']) client.events.on(t, render);
  render();
}

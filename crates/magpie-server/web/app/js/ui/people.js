// The People tab: find someone by username and send a friend request; answer incoming
// requests; see outgoing ones; the friends list with presence, each a click away from a chat.

import { describeError } from '../api.js';
import { avatar, formatTime, h, reconcile } from './dom.js';
import { toast } from './toast.js';

export function mountPeople(panel, app) {
  const { client } = app;

  // ---- search
  const q = h('input', {
    id: 'people-search', type: 'search', autocomplete: 'off', autocapitalize: 'none', spellcheck: false,
    placeholder: 'username', attrs: { maxlength: 32 },
  });
  const searchBtn = h('button', { class: 'btn btn-secondary', type: 'submit', text: 'Search' });
  const result = h('div', { class: 'search-result', id: 'search-result', attrs: { 'aria-live': 'polite' } });
  const form = h('form', { class: 'search', attrs: { role: 'search', 'aria-label': 'Find people' } },
    h('label', { htmlFor: 'people-search', text: 'Find people by username' }),
    h('div', { class: 'row' }, q, searchBtn),
  );

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = q.value.trim().toLowerCase();
    if (!name) return;
    result.replaceChildren(h('p', { class: 'muted', text: 'Searching…' }));
    try {
      const u = await client.api.userByName(name);
      client.users.set(u.user_id, u.username);
      renderResult(u);
    } catch (e) {
      result.replaceChildren(h('p', { class: 'muted', id: 'search-none', text: e.code === 'not_found' ? `No user called “${name}”.` : describeError(e) }));
    }
  });

  function renderResult(u) {
    const card = h('div', { class: 'person', dataset: { userId: u.user_id } }, avatar(u.username), h('span', { class: 'person-name', text: u.username }));
    if (u.user_id === client.me) card.append(h('span', { class: 'muted', text: 'That’s you' }));
    else if (client.friends.has(u.user_id)) {
      const open = h('button', { class: 'btn btn-secondary', type: 'button', text: 'Message' });
      open.addEventListener('click', () => message(u.user_id, open));
      card.append(open);
    } else if (client.requests.outgoing.some((r) => r.to_id === u.user_id)) {
      card.append(h('span', { class: 'muted', text: 'Request sent' }));
    } else {
      const add = h('button', { class: 'btn btn-primary', type: 'button', text: 'Add friend', attrs: { 'aria-label': `Send a friend request to ${u.username}` } });
      add.addEventListener('click', async () => {
        add.disabled = true;
        try {
          await client.requestFriend(u.user_id);
          add.replaceWith(h('span', { class: 'muted', text: 'Request sent' }));
          toast(`Friend request sent to ${u.username}.`);
        } catch (e) {
          add.disabled = false;
          toast(describeError(e), 'error');
        }
      });
      card.append(add);
    }
    result.replaceChildren(card);
  }

  async function message(userId, btn) {
    if (btn) btn.disabled = true;
    try {
      const id = await client.openDirect(userId);
      await app.openConversation(id);
    } catch (e) {
      toast(`Could not open the chat: ${describeError(e)}`, 'error');
    } finally {
      if (btn) btn.disabled = false;
    }
  }

  // ---- requests and friends
  const incoming = h('ul', { class: 'people-list', id: 'incoming-requests', attrs: { 'aria-labelledby': 'incoming-title' } });
  const outgoing = h('ul', { class: 'people-list', id: 'outgoing-requests', attrs: { 'aria-labelledby': 'outgoing-title' } });
  const friends = h('ul', { class: 'people-list', id: 'friends-list', attrs: { 'aria-labelledby': 'friends-title' } });
  const inSection = h('section', { class: 'people-section' }, h('h3', { id: 'incoming-title', text: 'Friend requests' }), incoming);
  const outSection = h('section', { class: 'people-section' }, h('h3', { id: 'outgoing-title', text: 'Sent requests' }), outgoing);
  const friendsEmpty = h('p', { class: 'empty', text: 'No friends yet: search for someone above.' });
  panel.append(
    form, result, inSection, outSection,
    h('section', { class: 'people-section' }, h('h3', { id: 'friends-title', text: 'Friends' }), friends, friendsEmpty),
  );

  const inCache = new Map();
  const outCache = new Map();
  const friendCache = new Map();

  function requestRow(r) {
    const name = client.users.label(r.from_id);
    const accept = h('button', { class: 'btn btn-primary', type: 'button', text: 'Accept', attrs: { 'aria-label': `Accept friend request from ${name}` } });
    const decline = h('button', { class: 'btn btn-ghost', type: 'button', text: 'Decline', attrs: { 'aria-label': `Decline friend request from ${name}` } });
    accept.addEventListener('click', async () => {
      accept.disabled = decline.disabled = true;
      try {
        await client.acceptRequest(r.request_id);
        toast(`You and ${name} are now friends.`);
      } catch (e) {
        accept.disabled = decline.disabled = false;
        toast(describeError(e), 'error');
      }
    });
    decline.addEventListener('click', async () => {
      accept.disabled = decline.disabled = true;
      try {
        await client.declineRequest(r.request_id);
      } catch (e) {
        accept.disabled = decline.disabled = false;
        toast(describeError(e), 'error');
      }
    });
    return h('li', { class: 'person', dataset: { requestId: r.request_id, userId: r.from_id } },
      avatar(name),
      h('span', { class: 'person-name' }, h('span', { text: name }), r.message ? h('small', { class: 'muted', text: r.message }) : null),
      h('span', { class: 'person-actions' }, accept, decline),
    );
  }

  function friendRow(f) {
    const btn = h('button', { class: 'btn btn-secondary', type: 'button', text: 'Message', attrs: { 'aria-label': `Message ${f.username}` } });
    btn.addEventListener('click', () => message(f.user_id, btn));
    const seen = f.online ? 'online' : f.last_seen_ms ? `last seen ${formatTime(f.last_seen_ms)}` : 'offline';
    return h('li', { class: 'person', dataset: { userId: f.user_id, online: String(f.online) } },
      h('span', { class: 'avatar-wrap' }, avatar(f.username), h('span', { class: `presence ${f.online ? 'on' : 'off'}` })),
      h('span', { class: 'person-name' }, h('span', { text: f.username }), h('small', { class: 'muted', text: seen })),
      btn,
    );
  }

  function render() {
    const inc = client.requests.incoming;
    reconcile(incoming, inc.map((r) => ({ key: r.request_id, sig: client.users.label(r.from_id), build: () => requestRow(r) })), inCache);
    inSection.hidden = inc.length === 0;
    const out = client.requests.outgoing;
    reconcile(outgoing, out.map((r) => ({
      key: r.request_id,
      sig: client.users.label(r.to_id),
      build: () => h('li', { class: 'person', dataset: { requestId: r.request_id, userId: r.to_id } },
        avatar(client.users.label(r.to_id)), h('span', { class: 'person-name', text: client.users.label(r.to_id) }), h('span', { class: 'muted', text: 'Pending' })),
    })), outCache);
    outSection.hidden = out.length === 0;
    const fs = [...client.friends.values()].sort((a, b) => (b.online - a.online) || a.username.localeCompare(b.username));
    reconcile(friends, fs.map((f) => ({ key: f.user_id, sig: `${f.username}|${f.online}|${f.last_seen_ms}`, build: () => friendRow(f) })), friendCache);
    friendsEmpty.hidden = fs.length > 0;
  }
  for (const t of ['requests', 'friends', 'users']) client.events.on(t, render);
  render();
}

// The signed-in layout: a top bar (brand, connection state, account, log out), a sidebar
// with two tabs (Chats, People) and the chat pane. At phone width only one pane shows at a
// time (`data-pane` on the shell: "list" or "chat").

import { mountChat } from './chat.js';
import { mountConversations } from './conversations.js';
import { h, attr } from './dom.js';
import { mountPeople } from './people.js';

/**
 * Renders the app for a running `client` into `root`. `onLogout()` is called after the
 * user logged out. Returns the `app` object the parts share.
 */
export function renderShell(root, client, { onLogout }) {
  const status = h('span', { class: 'conn', id: 'conn-state', attrs: { role: 'status', 'aria-live': 'polite' } });
  const retry = h('button', { class: 'btn-link conn-retry', type: 'button', text: 'Retry now', hidden: true });
  retry.addEventListener('click', () => client.reconnectNow());
  const logout = h('button', { class: 'btn btn-ghost', type: 'button', text: 'Log out' });

  const tabChats = h('button', {
    class: 'tab', id: 'tab-chats', type: 'button', role: 'tab',
    attrs: { 'aria-controls': 'panel-chats', 'aria-selected': 'true' },
  }, 'Chats', h('span', { class: 'badge', id: 'chats-badge', hidden: true }));
  const tabPeople = h('button', {
    class: 'tab', id: 'tab-people', type: 'button', role: 'tab',
    attrs: { 'aria-controls': 'panel-people', 'aria-selected': 'false', tabindex: '-1' },
  }, 'People', h('span', { class: 'badge', id: 'people-badge', hidden: true }));
  const panelChats = h('section', { class: 'panel', id: 'panel-chats', role: 'tabpanel', attrs: { 'aria-labelledby': 'tab-chats' } });
  const panelPeople = h('section', { class: 'panel', id: 'panel-people', role: 'tabpanel', hidden: true, attrs: { 'aria-labelledby': 'tab-people' } });
  const chatPane = h('main', { class: 'chat', id: 'chat', attrs: { 'aria-label': 'Chat' } });

  const shell = h('div', { class: 'shell', dataset: { pane: 'list' } },
    h('header', { class: 'topbar' },
      h('div', { class: 'brand' }, h('img', { src: '/app/icon.svg', alt: '', width: 28, height: 28 }), h('span', { text: 'Magpie' })),
      h('div', { class: 'conn-wrap' }, status, retry),
      h('div', { class: 'account' },
        h('span', { class: 'me', id: 'me-name', text: client.session.username, title: `Signed in as ${client.session.username}` }),
        logout,
      ),
    ),
    h('div', { class: 'body' },
      h('aside', { class: 'sidebar', attrs: { 'aria-label': 'Conversations and people' } },
        h('div', { class: 'tabs', role: 'tablist', attrs: { 'aria-label': 'Sidebar' } }, tabChats, tabPeople),
        panelChats,
        panelPeople,
      ),
      chatPane,
    ),
  );
  root.replaceChildren(shell);

  const app = {
    client,
    /** Shows a conversation (and the chat pane at phone width). */
    async openConversation(id, { focus = true } = {}) {
      shell.dataset.pane = 'chat';
      selectTab('chats', false);
      // The chat pane focuses its composer once it shows the conversation.
      app.wantFocus = focus;
      await client.open(id);
    },
    /** Back to the list (phone width), focusing the conversation that was open. */
    showList() {
      const id = client.openId;
      shell.dataset.pane = 'list';
      client.close();
      if (id) setTimeout(() => document.querySelector(`.conv[data-conv-id="${CSS.escape(id)}"]`)?.focus(), 0);
    },
    selectTab: (name) => selectTab(name, true),
    wantFocus: false,
  };

  function selectTab(name, focus) {
    const chats = name === 'chats';
    attr(tabChats, 'aria-selected', String(chats));
    attr(tabPeople, 'aria-selected', String(!chats));
    attr(tabChats, 'tabindex', chats ? null : '-1');
    attr(tabPeople, 'tabindex', chats ? '-1' : null);
    panelChats.hidden = !chats;
    panelPeople.hidden = chats;
    if (focus) (chats ? tabChats : tabPeople).focus();
  }
  tabChats.addEventListener('click', () => selectTab('chats', false));
  tabPeople.addEventListener('click', () => selectTab('people', false));
  for (const t of [tabChats, tabPeople]) {
    t.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
        ev.preventDefault();
        selectTab(t === tabChats ? 'people' : 'chats', true);
      }
    });
  }

  logout.addEventListener('click', async () => {
    logout.disabled = true;
    await client.logout();
    onLogout();
  });

  // Connection state, with a countdown while waiting to reconnect.
  let tick = null;
  function renderStatus() {
    const c = client.connection;
    clearInterval(tick);
    status.dataset.state = c.state;
    retry.hidden = c.state !== 'waiting';
    const text = {
      connecting: 'Connecting…',
      online: 'Connected',
      revoked: 'Signed out',
      stopped: 'Offline',
    }[c.state];
    if (text) status.textContent = text;
    else if (c.state === 'waiting') {
      const show = () => {
        const s = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
        status.textContent = s > 0 ? `Offline · reconnecting in ${s}s` : 'Offline · reconnecting…';
      };
      show();
      tick = setInterval(show, 1000);
    }
  }
  client.events.on('connection', renderStatus);
  renderStatus();

  // Badges on the tabs: unread conversations, incoming friend requests.
  function renderBadges() {
    const unread = [...client.conversations.values()].filter((c) => c.unread_count > 0 && !c.muted).length;
    const b1 = shell.querySelector('#chats-badge');
    b1.hidden = unread === 0;
    b1.textContent = String(unread);
    attr(b1, 'aria-label', `${unread} unread conversations`);
    const n = client.requests.incoming.length;
    const b2 = shell.querySelector('#people-badge');
    b2.hidden = n === 0;
    b2.textContent = String(n);
    attr(b2, 'aria-label', `${n} friend requests`);
  }
  client.events.on('conversations', renderBadges);
  client.events.on('requests', renderBadges);

  mountConversations(panelChats, app);
  mountPeople(panelPeople, app);
  mountChat(chatPane, app);

  // Escape in the chat pane at phone width goes back to the list.
  shell.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && shell.dataset.pane === 'chat' && !document.querySelector('dialog[open]')) {
      if (window.matchMedia('(max-width: 600px)').matches) app.showList();
    }
  });
  return app;
}

// The chat pane: header (title, presence or member count, mute, group settings), the
// message log with scroll-back paging, typing indicator, read receipts, and the composer
// (Enter sends, Shift+Enter adds a line).

import { describeError } from '../api.js';
import { attr, avatar, formatTime, h, reconcile, replace } from './dom.js';
import { openGroupSettings } from './groups.js';
import { messageElement } from './messages.js';
import { toast } from './toast.js';

const TEXT_CHARS_MAX = 100_000;
/** Within this many pixels of the bottom counts as "at the bottom" (stick to new messages). */
const BOTTOM_SLACK_PX = 48;
/** Within this many pixels of the top, older messages are loaded. */
const TOP_LOAD_PX = 80;

export function mountChat(pane, app) {
  const { client } = app;
  const drafts = new Map();
  const cache = new Map();
  let shownId = null;
  let forceBottom = false;
  let lastNewestKey = null;
  let unseenBelow = false;

  // ---- skeleton
  const placeholder = h('div', { class: 'chat-empty', id: 'chat-empty' },
    h('img', { src: '/app/icon.svg', alt: '', width: 56, height: 56 }),
    h('p', { text: 'Pick a conversation, or find people under People.' }),
  );
  const back = h('button', { class: 'btn-icon back', type: 'button', text: '←', attrs: { 'aria-label': 'Back to conversations' } });
  const avatarSlot = h('span', { class: 'avatar-wrap' });
  const title = h('h2', { class: 'chat-title', id: 'chat-title' });
  const subtitle = h('span', { class: 'chat-sub', id: 'chat-sub' });
  const muteBtn = h('button', { class: 'btn btn-ghost', type: 'button', id: 'mute-toggle', attrs: { 'aria-pressed': 'false' } });
  const groupBtn = h('button', { class: 'btn btn-ghost', type: 'button', id: 'group-settings', text: 'Group settings' });
  const older = h('button', { class: 'btn-link load-older', type: 'button', id: 'load-older', text: 'Load older messages' });
  const olderNote = h('span', { class: 'older-note', id: 'older-note' });
  const list = h('ol', { class: 'msg-list', id: 'msg-list' });
  const scroller = h('div', {
    class: 'messages', id: 'messages', tabIndex: 0,
    attrs: { role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-labelledby': 'chat-title' },
  }, h('div', { class: 'older' }, older, olderNote), list);
  const jump = h('button', { class: 'btn jump', type: 'button', id: 'jump-latest', hidden: true, text: 'New messages ↓' });
  const typing = h('div', { class: 'typing', id: 'typing', attrs: { 'aria-live': 'polite' } });
  const input = h('textarea', {
    id: 'composer-input', rows: 1, placeholder: 'Message',
    attrs: { 'aria-label': 'Message', maxlength: TEXT_CHARS_MAX, enterkeyhint: 'send' },
  });
  const sendBtn = h('button', { class: 'btn btn-primary', type: 'submit', text: 'Send', id: 'send-btn' });
  const composer = h('form', { class: 'composer', id: 'composer', attrs: { 'aria-label': 'Send a message' } }, input, sendBtn);
  const view = h('div', { class: 'chat-view', id: 'chat-view', hidden: true },
    h('header', { class: 'chat-header' },
      back, avatarSlot,
      h('div', { class: 'chat-titles' }, title, subtitle),
      h('div', { class: 'chat-actions' }, muteBtn, groupBtn),
    ),
    scroller, jump, typing, composer,
  );
  pane.append(placeholder, view);

  // ---- header
  function renderHeader() {
    const c = client.conversations.get(shownId);
    if (!c) return;
    const name = client.title(c);
    title.textContent = name;
    replace(avatarSlot, avatar(name, c.kind === 'group' ? 'avatar-group' : ''));
    if (c.kind === 'direct') {
      const f = client.friends.get(c.peer_id);
      subtitle.textContent = !f ? 'Not friends' : f.online ? 'Online' : f.last_seen_ms ? `Last seen ${formatTime(f.last_seen_ms)}` : 'Offline';
      subtitle.dataset.online = String(!!f?.online);
    } else {
      subtitle.textContent = `${c.member_count} member${c.member_count === 1 ? '' : 's'}`;
      delete subtitle.dataset.online;
    }
    muteBtn.textContent = c.muted ? 'Unmute' : 'Mute';
    attr(muteBtn, 'aria-pressed', String(!!c.muted));
    groupBtn.hidden = c.kind !== 'group';
    input.placeholder = `Message ${name}`;
  }

  // ---- messages
  /** The rows to show: day separators, stored messages, our unsent ones, the receipt line. */
  function items(id) {
    const c = client.conversations.get(id);
    const tl = client.timeline(id);
    const stored = new Set(tl.msgs.filter((m) => m.sender_id === client.me).map((m) => m.client_msg_id));
    const rows = tl.msgs.map((m) => ({ m, pending: null }));
    if (tl.atLatest) {
      for (const e of client.outbox.forConversation(id)) {
        if (stored.has(e.client_msg_id)) continue;
        rows.push({
          m: { conversation_id: id, seq: 0, sender_id: client.me, client_msg_id: e.client_msg_id, text: e.text, ts_ms: e.ts_ms, kind: 'text' },
          pending: e,
        });
      }
    }
    const own = tl.atLatest ? client.newestOwn(id) : null;
    const out = [];
    let day = null;
    let prevSender = null;
    for (const r of rows) {
      const d = new Date(r.m.ts_ms).toDateString();
      if (d !== day) {
        day = d;
        prevSender = null;
        out.push({ key: `d:${d}`, sig: d, build: () => dayElement(r.m.ts_ms) });
      }
      const mine = r.m.sender_id === client.me && r.m.kind !== 'system';
      const showSender = c?.kind === 'group' && r.m.kind !== 'system' && prevSender !== r.m.sender_id;
      prevSender = r.m.kind === 'system' ? null : r.m.sender_id;
      const item = { m: r.m, own: mine, pending: r.pending, showSender };
      const key = mine ? `c:${r.m.client_msg_id}` : `s:${r.m.seq}`;
      // Names shown in the row: a re-render is due when one of them arrives.
      let names = '';
      if (r.m.kind === 'system') names = usersSig(r.m);
      else if (showSender) names = client.users.label(r.m.sender_id);
      const state = r.pending ? `${r.pending.state}|${r.pending.error}` : 'sent';
      out.push({
        key,
        sig: `${r.m.seq}|${state}|${names}`,
        build: () => messageElement(client, item, { retry: (x) => client.retry(x), discard: (x) => client.discard(x) }),
      });
      if (own && r.m === own) {
        const rc = receiptRow(id, c, own);
        if (rc) out.push(rc);
      }
    }
    return out;
  }

  /** The names a system message mentions, plus its content. */
  function usersSig(m) {
    const s = m.system || {};
    const ids = [s.actor_id, s.user_id, ...(s.user_ids || [])];
    return JSON.stringify([s, ids.map((u) => (u ? client.users.label(u) : ''))]);
  }

  function dayElement(ts) {
    const d = new Date(ts);
    const today = new Date();
    const yesterday = new Date(Date.now() - 86_400_000);
    const text = d.toDateString() === today.toDateString()
      ? 'Today'
      : d.toDateString() === yesterday.toDateString()
        ? 'Yesterday'
        : d.toLocaleDateString([], { weekday: 'long', day: 'numeric', month: 'long' });
    return h('li', { class: 'day', role: 'separator', text });
  }

  /** "Read" (direct) or "Read by N of M" with the list (groups) under our newest message. */
  function receiptRow(id, c, own) {
    if (!c) return null;
    if (c.kind === 'direct') {
      const seen = client.peerReads.get(id)?.get(c.peer_id) || 0;
      if (seen < own.seq) return null;
      return {
        key: 'receipt',
        sig: `direct|${own.seq}`,
        build: () => h('li', { class: 'receipt', id: 'receipt', dataset: { seq: String(own.seq) }, text: 'Read' }),
      };
    }
    const r = client.receipts.get(id);
    if (!r || r.seq !== own.seq) return null;
    const total = r.read_count + r.unread_count;
    if (!total) return null;
    const readers = r.read.map((u) => client.users.label(u));
    const waiting = r.unread.map((u) => client.users.label(u));
    return {
      key: 'receipt',
      sig: `group|${r.seq}|${readers}|${waiting}`,
      build: () => h('li', { class: 'receipt', id: 'receipt', dataset: { seq: String(r.seq) } },
        h('details', { class: 'receipt-details' },
          h('summary', { text: `Read by ${r.read_count} of ${total}` }),
          h('div', { class: 'receipt-list' },
            h('p', {}, h('strong', { text: 'Read: ' }), readers.length ? readers.join(', ') : 'nobody yet'),
            waiting.length ? h('p', {}, h('strong', { text: 'Not yet: ' }), waiting.join(', ')) : null,
          ),
        ),
      ),
    };
  }

  function atBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < BOTTOM_SLACK_PX;
  }

  function renderMessages() {
    if (!shownId) return;
    const tl = client.timeline(shownId);
    const wasAtBottom = atBottom();
    // Keep the first visible row where it is when rows are added above or removed.
    let anchor = null;
    let anchorOffset = 0;
    if (!wasAtBottom) {
      for (const el of list.children) {
        // Day separators are shared by the rows around them: anchor on a message row.
        if (el.classList.contains('day')) continue;
        if (el.offsetTop + el.offsetHeight > scroller.scrollTop) {
          anchor = el;
          anchorOffset = el.offsetTop - scroller.scrollTop;
          break;
        }
      }
    }
    const rows = items(shownId);
    reconcile(list, rows, cache);
    const newestKey = rows.length ? rows[rows.length - 1].key : null;
    if (forceBottom || wasAtBottom) {
      scroller.scrollTop = scroller.scrollHeight;
      unseenBelow = false;
    } else {
      if (anchor?.isConnected) scroller.scrollTop = anchor.offsetTop - anchorOffset;
      if (newestKey !== lastNewestKey && newestKey !== 'receipt') unseenBelow = true;
    }
    forceBottom = false;
    lastNewestKey = newestKey;
    older.hidden = !tl.hasOlder;
    older.disabled = !!tl.loading;
    older.textContent = tl.loading ? 'Loading…' : 'Load older messages';
    olderNote.textContent = !tl.hasOlder && tl.loaded && tl.msgs.length ? 'This is the beginning of the conversation.' : !tl.loaded ? 'Loading messages…' : '';
    jump.hidden = tl.atLatest && !unseenBelow;
    jump.textContent = tl.atLatest ? 'New messages ↓' : 'Jump to latest ↓';
    scroller.setAttribute('aria-busy', tl.loaded ? 'false' : 'true');
  }

  function renderTyping() {
    if (!shownId) return;
    const who = client.typingIn(shownId).map((u) => client.users.label(u));
    typing.textContent = who.length === 0
      ? ''
      : who.length === 1
        ? `${who[0]} is typing…`
        : who.length === 2
          ? `${who[0]} and ${who[1]} are typing…`
          : `${who.length} people are typing…`;
  }

  // ---- switching conversations
  function show() {
    const id = client.openId;
    if (id === shownId) {
      renderHeader();
      takeFocus();
      return;
    }
    if (shownId) drafts.set(shownId, input.value);
    shownId = id;
    cache.clear();
    list.replaceChildren();
    unseenBelow = false;
    lastNewestKey = null;
    placeholder.hidden = !!id;
    view.hidden = !id;
    if (!id) return;
    input.value = drafts.get(id) || '';
    autoGrow();
    forceBottom = true;
    renderHeader();
    renderMessages();
    renderTyping();
    takeFocus();
  }

  function takeFocus() {
    if (app.wantFocus && shownId) {
      app.wantFocus = false;
      input.focus();
    }
  }

  // ---- events
  client.events.on('open', show);
  client.events.on('conversations', () => {
    renderHeader();
    renderMessages();
  });
  client.events.on('friends', renderHeader);
  client.events.on('users', () => {
    renderHeader();
    renderMessages();
  });
  client.events.on('typing', renderTyping);
  // Timeline, receipt and group topics are per conversation; subscribe lazily per id.
  const subscribed = new Set();
  client.events.on('open', () => {
    const id = client.openId;
    if (!id || subscribed.has(id)) return;
    subscribed.add(id);
    const again = () => id === shownId && renderMessages();
    client.events.on(`timeline:${id}`, again);
    client.events.on(`receipts:${id}`, again);
    client.events.on(`group:${id}`, () => id === shownId && renderHeader());
  });

  scroller.addEventListener('scroll', () => {
    if (!shownId) return;
    const tl = client.timeline(shownId);
    if (scroller.scrollTop < TOP_LOAD_PX && tl.hasOlder && !tl.loading && tl.loaded) client.loadOlder(shownId);
    if (atBottom() && unseenBelow) {
      unseenBelow = false;
      jump.hidden = tl.atLatest;
    }
  });
  older.addEventListener('click', () => shownId && client.loadOlder(shownId));
  jump.addEventListener('click', async () => {
    const tl = client.timeline(shownId);
    forceBottom = true;
    unseenBelow = false;
    if (!tl.atLatest) await client.jumpToLatest(shownId);
    else renderMessages();
    input.focus();
  });
  back.addEventListener('click', () => app.showList());
  muteBtn.addEventListener('click', async () => {
    const c = client.conversations.get(shownId);
    if (!c) return;
    try {
      await client.setMuted(c.conversation_id, !c.muted);
    } catch (e) {
      toast(`Could not change notifications: ${describeError(e)}`, 'error');
    }
  });
  groupBtn.addEventListener('click', () => shownId && openGroupSettings(app, shownId));

  // ---- composer
  function autoGrow() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }
  input.addEventListener('input', () => {
    autoGrow();
    if (shownId && input.value.trim()) client.sendTyping(shownId);
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!shownId || !text.trim()) return;
    if ([...text].length > TEXT_CHARS_MAX) {
      toast('That message is too long (100,000 characters at most).', 'error');
      return;
    }
    if (!client.send(shownId, text)) return;
    forceBottom = true;
    input.value = '';
    drafts.delete(shownId);
    autoGrow();
    input.focus();
  });
}

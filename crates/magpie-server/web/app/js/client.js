// The client core: everything between the wire and the screen, and no DOM. It owns the
// socket, the inbox sequencer (cursor dedupe and gap filling), the per-conversation tracker
// (seq merge over both fan-out modes), the visible timelines, the outbox, and the app state
// (conversation list, friends, requests, presence, typing, receipts). The UI reads its fields
// and subscribes to topics on `client.events`:
//   conversations, friends, requests, connection, users, open, typing,
//   timeline:<id>, receipts:<id>, group:<id>

import { ApiError, createApi, describeError } from './api.js';
import { config } from './config.js';
import { loadCursor, outboxStorage, saveCursor } from './session.js';
import { Socket } from './socket.js';
import { mergeRow } from './store/conversations.js';
import { Emitter } from './store/emitter.js';
import { Inbox } from './store/inbox.js';
import { Outbox } from './store/outbox.js';
import { Timeline } from './store/timeline.js';
import { Tracker } from './store/tracker.js';
import { Users } from './store/users.js';

/** Send refusals worth retrying automatically. */
const TRANSIENT = new Set(['rate_limited', 'unavailable', 'internal']);

/** Unsent messages kept at most (beyond that, sending is refused until some go out). */
const OUTBOX_MAX = 1_000;
/** Opened conversations whose window is kept in memory; older ones are reloaded on open. */
const WINDOWS_KEPT_MAX = 20;
/** How often receipts of an open large group are asked for (they have no receipt events). */
const READ_FANOUT_RECEIPTS_POLL_MS = 3_000;
/** First delay before fetching the catch-up list again after a failure (ms); doubles up to the max. */
const CATCH_UP_RETRY_MS = 500;
const CATCH_UP_RETRY_MS_MAX = 30_000;
/** Longest random delay before re-reading a group after one of its system messages. */
const GROUP_REFRESH_SPREAD_MS_MAX = 5_000;

const now = () => performance.now();

export class Client {
  /**
   * @param {object} session `{token, user_id, device_id, username}`
   * @param {object} hooks `onRevoked()` when the session ends; `notify(text, kind)` for toasts
   */
  constructor(session, { onRevoked = () => {}, notify = () => {} } = {}) {
    this.session = session;
    this.me = session.user_id;
    this.onRevoked = onRevoked;
    this.notify = notify;
    this.api = createApi({ getToken: () => this.session.token, onUnauthorized: () => this.revoke() });
    this.events = new Emitter();
    this.users = new Users(this.api, () => this.events.changed('users'));
    this.users.set(this.me, session.username);
    this.tracker = new Tracker({ pullPage: config.pullPage, pullTimeoutMs: config.pullTimeoutMs });
    // Unsent messages of an earlier page load of this device are restored (and re-sent once
    // the socket is ready, with their original ids).
    this.outbox = new Outbox(outboxStorage(session), now());
    /** @type {Map<string, Timeline>} */
    this.timelines = new Map();
    /** Conversation rows (`GET /v1/conversations`) plus `activity` (ms) for ordering. */
    this.conversations = new Map();
    /** Friends by id: `{user_id, username, online, last_seen_ms}`. */
    this.friends = new Map();
    this.requests = { incoming: [], outgoing: [] };
    /** conversation → Map(user → until ms) of who is typing. */
    this.typing = new Map();
    /** conversation → Map(user → read_seq) from `receipt` events and receipt queries. */
    this.peerReads = new Map();
    /** conversation → `{seq, read, unread}` for group receipts of our newest message. */
    this.receipts = new Map();
    /** Read marks not yet written: conversation → seq. */
    this.pendingReads = new Map();
    this.connection = { state: 'connecting' };
    this.openId = null;
    this.inbox = null;
    this.acked = loadCursor(session) ?? 0;
    this.queue = Promise.resolve();
    this.gen = 0;
    this.timers = {};
    this.lastTypingSent = new Map();
    /** Serialized list refreshes by kind (see `serial`). */
    this.serials = {};
    /** When we left each conversation (a list asked for earlier must not bring it back). */
    this.leftAt = new Map();
    /** Friend requests to announce if they are still pending at the next list refresh. */
    this.announce = new Map();
    this.stopped = false;
  }

  // ---------------------------------------------------------------- lifecycle

  async start() {
    // The list first: it seeds every conversation's stream at its last seq (history is read
    // over HTTP when a conversation is opened), so the inbox replay only adds what is new.
    try {
      await this.refreshConversations();
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) console.warn('conversation list', e);
    }
    if (this.stopped) return;
    this.refreshFriends();
    this.refreshRequests();
    this.socket = new Socket({
      url: () => {
        const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
        return `${proto}//${location.host}/v1/ws?token=${encodeURIComponent(this.session.token)}`;
      },
      onReady: (f) => this.enqueue(() => this.onReady(f)),
      onFrame: (f) => {
        const gen = this.gen;
        this.enqueue(() => (gen === this.gen ? this.onFrame(f) : undefined));
      },
      onState: (state, detail) => this.onSocketState(state, detail),
      onFailure: (n) => {
        // A refused upgrade looks like any failure to a browser; ask HTTP whether the token
        // still works (a 401 there ends the session).
        if (n >= 2) this.api.user(this.me).catch(() => {});
      },
    });
    this.socket.start();
    this.timers.housekeeping = setInterval(() => this.housekeeping(), 250);
    this.onVisible = () => this.markOpenRead();
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('focus', this.onVisible);
  }

  /** Stops everything (logout or revocation). */
  stop() {
    this.stopped = true;
    this.socket?.stop();
    for (const t of Object.values(this.timers)) {
      clearTimeout(t);
      clearInterval(t);
    }
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('focus', this.onVisible);
  }

  async logout() {
    // The server closes our sockets with 4001 as the logout lands: that is not a revocation.
    this.loggingOut = true;
    this.flushAck();
    try {
      await this.api.logout();
    } catch {
      // Offline: the token stays valid server-side, but this tab forgets it.
    }
    this.stop();
  }

  revoke() {
    if (this.stopped || this.loggingOut) return;
    this.stop();
    this.onRevoked();
  }

  /** Runs `fn` after every earlier frame was handled (frames are processed in order). */
  enqueue(fn) {
    this.queue = this.queue.then(fn).catch((e) => console.error('frame handling failed', e));
  }

  onSocketState(state, detail = {}) {
    const wasOnline = this.connection.state === 'online';
    this.connection = { state, ...detail };
    // Frames are tagged with the connection they came on; a new connection (and a lost one)
    // makes queued frames of the old one stale: the new `sync` replays whatever they carried.
    if (state === 'online') this.gen++;
    if (state !== 'online' && wasOnline) {
      this.gen++;
      this.tracker.onDisconnected();
      this.outbox.resetWritten();
    }
    if (state === 'revoked') this.revoke();
    this.events.changed('connection');
  }

  reconnectNow() {
    this.socket?.reconnectNow();
  }

  // ---------------------------------------------------------------- the connection

  async onReady(ready) {
    if (!this.inbox) {
      // A cursor this tab persisted wins; otherwise the server's record for the device. A
      // brand-new device starts at the inbox head: what happened before is loaded over HTTP
      // (conversation list, history pages, friends, requests), not replayed event by event.
      const start = loadCursor(this.session) ?? (ready.cursor || ready.inbox_head || 0);
      this.inbox = new Inbox(
        start,
        async (after) => (await this.api.sync(after, config.syncPage)).events || [],
        (ev) => this.onEvent(ev),
      );
    }
    if (Number.isSafeInteger(ready.inbox_head) && this.inbox.last > ready.inbox_head) {
      // A cursor past everything this user's inbox holds (the server was restored from an
      // older backup): the server would refuse to sync from it, and nothing beyond its head
      // exists to be missed, so start from there.
      console.warn(`inbox: cursor ${this.inbox.last} is past the server's head ${ready.inbox_head}; resuming there`);
      this.inbox.last = ready.inbox_head;
      this.acked = Math.min(this.acked, ready.inbox_head);
      // The conversations are as stale: a restored timeline reuses seqs this tab already
      // holds, and the tracker would drop every new message at one of them as old (and a
      // timeline would refuse it). Start them afresh; the open one reloads below.
      this.tracker = new Tracker({ pullPage: config.pullPage, pullTimeoutMs: config.pullTimeoutMs });
      this.timelines.clear();
      // So are the rows' seqs and read marks, and the receipts: the list fetched below must
      // win over them (rows merge by the higher seq), or new messages at reused seqs would
      // show no preview or badge and never be marked read.
      for (const c of this.conversations.values()) {
        c.last_seq = 0;
        c.read_seq = 0;
      }
      this.peerReads.clear();
      this.receipts.clear();
      this.pendingReads.clear();
      this.events.changed('conversations');
      if (this.openId) this.events.changed(`timeline:${this.openId}`);
    }
    this.socket.send({ type: 'sync', cursor: this.inbox.last });
    // Progress made while offline (or persisted by an earlier page load) the server has not seen.
    if (this.inbox.last > (ready.cursor ?? 0) && this.socket.send({ type: 'ack', cursor: this.inbox.last })) {
      this.acked = Math.max(this.acked, this.inbox.last);
    }
    this.flushOutbox();
    this.flushReads();
    this.applyEffects(this.tracker.onConnected(now()));
    // Catch up: read-fan-out messages are not in the inbox, so compare each conversation's
    // last_seq with what we have and pull the difference. Presence may have changed too.
    this.catchUp(this.gen, 1);
    this.refreshFriends();
    this.refreshRequests();
    if (this.openId) {
      // A first page that failed to load while offline is fetched now.
      const tl = this.timeline(this.openId);
      if (!tl.loaded && !tl.loading) this.loadLatest(this.openId);
      this.refreshReceipts(this.openId);
    }
  }

  async onFrame(f) {
    switch (f.type) {
      case 'event':
        if (this.inbox) {
          await this.inbox.accept(f);
          this.scheduleAck();
        }
        break;
      case 'sent':
        this.onSent(f);
        break;
      case 'error':
        this.onError(f);
        break;
      case 'notify':
        this.applyEffects(this.tracker.onNotify(f.conversation_id, f.last_seq, now()));
        break;
      case 'messages':
        this.applyEffects(this.tracker.onPulled(f.conversation_id, f.messages || [], now(), !!f.truncated));
        break;
      case 'presence':
        this.onPresence(f);
        break;
      case 'typing':
        this.onTyping(f);
        break;
      default:
        break; // pong, and frames added later
    }
  }

  /** One inbox event, exactly once and in cursor order. Unknown kinds are stepped over. */
  onEvent(ev) {
    switch (ev.kind) {
      case 'message':
        this.applyEffects(this.tracker.onMessage(ev.message, now()));
        break;
      case 'friend_request':
        // Announced once the refreshed list confirms it is still pending (an inbox replay
        // also carries requests answered long ago).
        if (ev.request && Date.now() - ev.request.ts_ms < 60_000) this.announce.set(ev.request.request_id, now());
        this.refreshSoon('requests');
        break;
      case 'friend_added':
        this.refreshSoon('friends', 'requests', 'conversations');
        break;
      case 'group_joined':
        this.applyEffects(this.tracker.onJoined(ev.conversation_id, now()));
        this.refreshSoon('conversations');
        break;
      case 'group_left':
        this.onLeft(ev.conversation_id);
        break;
      case 'read':
        this.onRead(ev.conversation_id, ev.read_seq);
        break;
      case 'receipt':
        this.onReceipt(ev.conversation_id, ev.user_id, ev.read_seq);
        break;
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- messages

  applyEffects(fx) {
    for (const p of fx.pulls) {
      this.socket?.send({ type: 'pull', conversation_id: p.conversation_id, after_seq: p.after_seq, limit: p.limit });
    }
    for (const m of fx.messages) this.deliver(m);
  }

  /** A message of the live stream (or our own `sent`), in seq order per conversation. */
  deliver(m) {
    const id = m.conversation_id;
    this.settleOwn([m]);
    const tl = this.timeline(id);
    const gapAfter = tl.loaded && tl.atLatest && tl.msgs.length && m.seq > tl.newestSeq() + 1 ? tl.newestSeq() : null;
    if (tl.addLive(m)) this.events.changed(`timeline:${id}`);
    if (gapAfter !== null) this.fillGap(id, gapAfter, m.seq);
    this.noteMessage(m);
    if (m.sender_id !== this.me) this.typing.get(id)?.delete(m.sender_id) && this.events.changed('typing');
    if (m.kind === 'system') {
      // Show a rename at once; member counts and roles come with the list refresh.
      const c = this.conversations.get(id);
      if (c && m.system?.action === 'renamed' && m.seq >= (c.renamedAt || 0)) {
        c.name = m.system.name;
        c.renamedAt = m.seq;
        this.events.changed('conversations');
      }
      this.refreshGroupSoon(id);
      this.events.changed(`group:${id}`);
    }
  }

  /**
   * Re-reads one group's row fields (member count, fan-out, receipts) after a system message.
   * Every online member gets the message at once, so the reads are spread over up to
   * GROUP_REFRESH_SPREAD_MS_MAX in large groups; and only the group is read: the whole list
   * costs the server an unread count per conversation, per member.
   */
  refreshGroupSoon(id) {
    this.groupTimers ||= new Map();
    if (this.groupTimers.has(id)) return;
    const spread = Math.min(GROUP_REFRESH_SPREAD_MS_MAX, this.conversations.get(id)?.member_count ?? 0);
    const run = async () => {
      this.groupTimers.delete(id);
      let info;
      try {
        info = await this.api.group(id);
      } catch {
        return; // Left meanwhile (the group_left event cleans up), or offline (the list is re-read on reconnect).
      }
      const c = this.conversations.get(id);
      if (!c) return;
      c.member_count = info.member_count;
      if (info.fanout) c.fanout = info.fanout;
      if (info.receipts) c.receipts = info.receipts;
      this.events.changed('conversations');
    };
    this.groupTimers.set(id, setTimeout(run, 100 + Math.random() * spread));
  }

  /** Updates the conversation row (preview, unread badge, order) for a message. */
  noteMessage(m) {
    const c = this.conversations.get(m.conversation_id);
    if (!c) {
      this.refreshSoon('conversations');
      return;
    }
    if (m.seq > c.last_seq) {
      c.last_seq = m.seq;
      c.last_message = m;
      c.activity = Math.max(c.activity, m.ts_ms || Date.now());
      if (m.sender_id !== this.me && m.seq > c.read_seq) c.unread_count += 1;
      this.events.changed('conversations');
    }
    if (m.conversation_id === this.openId) this.markOpenRead();
    if (m.sender_id === this.me || this.conversations.get(m.conversation_id)?.kind === 'group') {
      this.refreshReceiptsSoon(m.conversation_id);
    }
  }

  /** Fills a hole in a visible window from history (a safety net; the tracker avoids it). */
  async fillGap(id, after, upTo) {
    try {
      let cursor = after;
      while (cursor < upTo - 1) {
        const resp = await this.api.history(id, { after_seq: cursor, limit: 200 });
        const page = resp.messages || [];
        const tl = this.timeline(id);
        for (const m of page) tl.addLive(m);
        this.settleOwn(page);
        this.events.changed(`timeline:${id}`);
        // A page cut at the server's byte budget is short but not the end.
        if (!page.length || (page.length < 200 && !resp.truncated)) break;
        cursor = page[page.length - 1].seq;
      }
    } catch (e) {
      console.warn('gap fill failed', e);
    }
  }

  timeline(id) {
    let tl = this.timelines.get(id);
    if (!tl) {
      tl = new Timeline(id, config.messagesPerConversationMax);
      this.timelines.set(id, tl);
    }
    return tl;
  }

  /** Queues a message (written now if online, else after reconnecting); its id, or null. */
  send(conversationId, text) {
    if (this.outbox.entries.size >= OUTBOX_MAX) {
      this.notify('Too many messages are waiting to be sent. Try again once you are back online.', 'error');
      return null;
    }
    const e = this.outbox.add(conversationId, text, now());
    this.flushOutbox();
    this.events.changed(`timeline:${conversationId}`);
    return e.client_msg_id;
  }

  /** Sends a failed message again with the same client_msg_id. */
  retry(clientMsgId) {
    const e = this.outbox.retry(clientMsgId, now());
    if (!e) return;
    this.flushOutbox();
    this.events.changed(`timeline:${e.conversation_id}`);
  }

  /** Gives up on a failed message. */
  discard(clientMsgId) {
    const e = this.outbox.complete(clientMsgId);
    if (e) this.events.changed(`timeline:${e.conversation_id}`);
  }

  flushOutbox() {
    if (!this.socket?.online) return;
    const t = now();
    for (const e of this.outbox.unwritten(t)) {
      const ok = this.socket.send({
        type: 'send',
        client_msg_id: e.client_msg_id,
        conversation_id: e.conversation_id,
        text: e.text,
      });
      if (!ok) break;
      this.outbox.markWritten(e.client_msg_id);
    }
    // Sends held back after a refusal are written when their time comes.
    clearTimeout(this.timers.transient);
    const hold = this.outbox.nextHold();
    if (hold !== null) this.timers.transient = setTimeout(() => this.flushOutbox(), Math.max(0, hold - t));
  }

  /**
   * Own messages seen stored (live, pulled or in history) settle their outbox entries: a send
   * whose `sent` answer was lost with a connection, and that timed out as failed meanwhile,
   * was stored after all. Left in the outbox it would come back as "Not sent" after a reload,
   * and a user who typed it again would send it twice.
   */
  settleOwn(messages) {
    for (const m of messages) {
      if (m.sender_id !== this.me || !this.outbox.get(m.client_msg_id)) continue;
      this.outbox.complete(m.client_msg_id);
      this.events.changed(`timeline:${m.conversation_id}`);
    }
  }

  onSent(f) {
    const e = this.outbox.complete(f.client_msg_id);
    if (!e) return; // answered twice (a retry of a stored message), or discarded
    // A late answer for a conversation the user has left: nothing to show it in.
    if (!this.conversations.has(f.conversation_id) && this.leftAt.has(f.conversation_id)) return;
    this.deliver({
      conversation_id: f.conversation_id,
      seq: f.seq,
      sender_id: this.me,
      client_msg_id: f.client_msg_id,
      text: e.text,
      ts_ms: f.ts_ms,
      kind: 'text',
    });
  }

  onError(f) {
    if (!f.client_msg_id) {
      if (f.conversation_id) this.applyEffects(this.tracker.onRefused(f.conversation_id, f.code));
      else console.warn('server refused a frame:', f.code, f.message);
      return;
    }
    const e = this.outbox.get(f.client_msg_id);
    if (!e) return;
    if (!this.conversations.has(e.conversation_id) && this.leftAt.has(e.conversation_id)) {
      this.outbox.fail(f.client_msg_id, describeError(new ApiError(0, f.code, f.message)));
      return; // left meanwhile: kept failed, no toast (see `onLeft`)
    }
    if (TRANSIENT.has(f.code)) {
      // Retried until the send times out, backing off (doubling, with jitter) so that many
      // clients refused together do not all come back together; a send that times out shows
      // the server's last reason rather than "no answer".
      const reason = describeError(new ApiError(0, f.code, f.message));
      const holdUntil = (n) => {
        const full = config.transientRetryMs * 2 ** Math.min(n - 1, 5);
        return now() + full / 2 + Math.random() * (full / 2);
      };
      this.outbox.refused(f.client_msg_id, holdUntil, reason);
      this.flushOutbox(); // arms the timer for the earliest held send
      return;
    }
    this.outbox.fail(f.client_msg_id, describeError(new ApiError(0, f.code, f.message)));
    this.events.changed(`timeline:${e.conversation_id}`);
    this.notify(`Message not sent: ${describeError(new ApiError(0, f.code, f.message))}`, 'error');
  }

  /**
   * Fetches the conversation list after connecting, again and again (backing off) while the
   * connection `gen` lasts if it fails: without it, a quiet read-fan-out group would stay
   * behind until its next message.
   */
  catchUp(gen, attempt) {
    this.refreshConversations().catch(() => {
      if (gen !== this.gen) return; // A new connection does its own catch-up.
      const full = Math.min(CATCH_UP_RETRY_MS_MAX, CATCH_UP_RETRY_MS * 2 ** Math.min(attempt - 1, 10));
      setTimeout(() => {
        if (gen === this.gen) this.catchUp(gen, attempt + 1);
      }, full / 2 + Math.random() * (full / 2));
    });
  }

  // ---------------------------------------------------------------- opening and paging

  /** Shows a conversation: loads its newest page if needed and marks it read. */
  async open(id) {
    this.openId = id;
    this.events.changed('open');
    // Keep the windows of the most recently opened conversations only (bounded memory).
    this.recent = (this.recent || []).filter((x) => x !== id);
    this.recent.push(id);
    while (this.recent.length > WINDOWS_KEPT_MAX) this.timelines.delete(this.recent.shift());
    const tl = this.timeline(id);
    if (!tl.loaded) await this.loadLatest(id);
    this.markOpenRead();
    this.refreshReceipts(id);
  }

  close() {
    this.openId = null;
    this.events.changed('open');
  }

  async loadLatest(id) {
    const tl = this.timeline(id);
    if (tl.loading) return;
    tl.loading = true;
    const epoch = tl.epoch;
    try {
      const limit = config.historyPage;
      const resp = await this.api.history(id, { limit });
      if (tl.epoch !== epoch) return; // the window was cleared meanwhile
      const page = resp.messages || [];
      tl.loadLatest(page, page.length >= limit || !!resp.truncated);
      this.settleOwn(page);
      if (page.length) this.noteMessage(page[page.length - 1]);
    } catch (e) {
      this.notify(`Could not load messages: ${describeError(e)}`, 'error');
    } finally {
      if (tl.epoch === epoch) tl.loading = false;
      this.events.changed(`timeline:${id}`);
    }
  }

  /** Scroll-back: the page before the window's oldest message. */
  async loadOlder(id) {
    const tl = this.timeline(id);
    if (tl.loading || !tl.hasOlder || !tl.msgs.length) return false;
    tl.loading = true;
    const epoch = tl.epoch;
    try {
      const limit = config.historyPage;
      const before = tl.oldestSeq();
      const resp = await this.api.history(id, { before_seq: before, limit });
      // A window cleared meanwhile (jump to latest) is not this page's any more.
      if (tl.epoch !== epoch) return false;
      const page = resp.messages || [];
      this.settleOwn(page);
      // False if live messages pushed `before` out meanwhile: scrolling up asks again.
      return tl.addOlder(page, page.length >= limit || !!resp.truncated, before) && page.length > 0;
    } catch (e) {
      this.notify(`Could not load older messages: ${describeError(e)}`, 'error');
      return false;
    } finally {
      if (tl.epoch === epoch) tl.loading = false;
      this.events.changed(`timeline:${id}`);
    }
  }

  /** Re-attaches a window that scrolled far back to the live end. */
  async jumpToLatest(id) {
    this.timeline(id).clear();
    await this.loadLatest(id);
  }

  // ---------------------------------------------------------------- read state and receipts

  /** Marks the open conversation read up to its newest message, if the page is visible. */
  markOpenRead() {
    const id = this.openId;
    const c = id && this.conversations.get(id);
    if (!c || document.visibilityState !== 'visible') return;
    const tl = this.timeline(id);
    const seq = Math.max(c.last_seq, tl.atLatest ? tl.newestSeq() : 0);
    if (!tl.loaded || seq <= c.read_seq) return;
    c.read_seq = seq;
    c.unread_count = 0;
    this.events.changed('conversations');
    this.pendingReads.set(id, Math.max(this.pendingReads.get(id) || 0, seq));
    clearTimeout(this.timers.read);
    this.timers.read = setTimeout(() => this.flushReads(), 150);
  }

  flushReads() {
    for (const [id, seq] of this.pendingReads) {
      if (this.socket?.send({ type: 'read', conversation_id: id, seq })) this.pendingReads.delete(id);
    }
  }

  /** A `read` event: one of our devices read up to `seq`. */
  onRead(id, seq) {
    const c = this.conversations.get(id);
    if (!c || seq <= c.read_seq) return;
    c.read_seq = seq;
    if (seq >= c.last_seq) c.unread_count = 0;
    else this.refreshSoon('conversations');
    this.events.changed('conversations');
  }

  /** A `receipt` event: another member read up to `seq`. */
  onReceipt(id, userId, seq) {
    if (!this.peerReads.has(id)) this.peerReads.set(id, new Map());
    const reads = this.peerReads.get(id);
    if ((reads.get(userId) || 0) >= seq) return;
    reads.set(userId, seq);
    this.events.changed(`receipts:${id}`);
    if (this.conversations.get(id)?.kind === 'group') this.refreshReceiptsSoon(id);
  }

  /** Our newest message in the visible window of `id`, or null. */
  newestOwn(id) {
    const msgs = this.timeline(id).msgs;
    for (let i = msgs.length - 1; i >= 0; i--) {
      if (msgs[i].sender_id === this.me && msgs[i].kind !== 'system') return msgs[i];
    }
    return null;
  }

  refreshReceiptsSoon(id) {
    if (id !== this.openId) return;
    clearTimeout(this.timers.receipts);
    this.timers.receipts = setTimeout(() => this.refreshReceipts(id), 200);
  }

  /** Asks who read our newest message (`GET …/receipts?seq=`). */
  async refreshReceipts(id) {
    const own = this.newestOwn(id);
    if (!own || !this.conversations.has(id)) return;
    try {
      const r = await this.api.receipts(id, own.seq);
      this.receipts.set(id, r);
      if (!this.peerReads.has(id)) this.peerReads.set(id, new Map());
      const reads = this.peerReads.get(id);
      for (const u of r.read) if ((reads.get(u) || 0) < r.seq) reads.set(u, r.seq);
      this.events.changed(`receipts:${id}`);
    } catch (e) {
      if (e instanceof ApiError && e.code === 'network') return;
      console.warn('receipts', e);
    }
  }

  // ---------------------------------------------------------------- presence and typing

  onPresence(f) {
    const fr = this.friends.get(f.user_id);
    if (!fr) return;
    fr.online = f.online;
    fr.last_seen_ms = f.last_seen_ms;
    this.events.changed('friends');
    this.events.changed('conversations');
  }

  onTyping(f) {
    if (f.user_id === this.me) return;
    if (!this.typing.has(f.conversation_id)) this.typing.set(f.conversation_id, new Map());
    this.typing.get(f.conversation_id).set(f.user_id, Date.now() + config.typingShowMs);
    this.events.changed('typing');
  }

  /** Who is typing in `id` now (user ids). */
  typingIn(id) {
    const m = this.typing.get(id);
    if (!m) return [];
    const t = Date.now();
    return [...m].filter(([, until]) => until > t).map(([u]) => u);
  }

  /** Tells the others we are typing (throttled). */
  sendTyping(id) {
    const t = now();
    if (t - (this.lastTypingSent.get(id) || -Infinity) < config.typingSendEveryMs) return;
    if (this.socket?.send({ type: 'typing', conversation_id: id })) this.lastTypingSent.set(id, t);
  }

  // ---------------------------------------------------------------- periodic work

  housekeeping() {
    const t = now();
    for (const e of this.outbox.expire(t, config.sendTimeoutMs)) {
      this.events.changed(`timeline:${e.conversation_id}`);
    }
    this.applyEffects(this.tracker.pollTimeouts(t));
    // Large groups send no receipt events: ask now and then while one is open. (`receipts`
    // is absent from older servers, whose read-fan-out groups were the ones without events.)
    const open = this.openId && this.conversations.get(this.openId);
    const queryReceipts = open?.receipts ? open.receipts === 'query' : open?.fanout === 'read';
    if (open?.kind === 'group' && queryReceipts && t - (this.receiptPolledAt || 0) > READ_FANOUT_RECEIPTS_POLL_MS) {
      this.receiptPolledAt = t;
      if (this.socket?.online) this.refreshReceipts(open.conversation_id);
    }
    const wall = Date.now();
    for (const [id, m] of this.typing) {
      for (const [u, until] of m) {
        if (until <= wall) {
          m.delete(u);
          this.events.changed('typing');
        }
      }
      if (!m.size) this.typing.delete(id);
    }
  }

  scheduleAck() {
    if (this.timers.ack) return;
    this.timers.ack = setTimeout(() => {
      this.timers.ack = null;
      this.flushAck();
    }, config.ackDebounceMs);
  }

  /** Persists the processed cursor and acks it (when online; else after reconnecting). */
  flushAck() {
    const cursor = this.inbox?.last ?? 0;
    if (cursor <= this.acked) return;
    saveCursor(this.session, cursor);
    if (this.socket?.send({ type: 'ack', cursor })) this.acked = cursor;
  }

  // ---------------------------------------------------------------- lists

  /**
   * Runs `fn` after the previous run of the same kind finished, so list answers are applied
   * in the order they were asked for. A call while one run waits to start shares that run
   * (it starts after the call, so its answer is fresh enough for the caller).
   */
  serial(kind, fn) {
    const s = (this.serials[kind] ||= { tail: Promise.resolve(), queued: null });
    if (s.queued) return s.queued;
    const run = s.tail.then(() => {
      s.queued = null;
      return fn();
    });
    s.queued = run;
    s.tail = run.catch(() => {});
    return run;
  }

  /** Re-reads the named lists after a short pause (coalescing bursts of events). */
  refreshSoon(...what) {
    this.soon = this.soon || new Set();
    for (const w of what) this.soon.add(w);
    if (this.timers.soon) return;
    this.timers.soon = setTimeout(() => {
      this.timers.soon = null;
      const todo = this.soon;
      this.soon = new Set();
      if (todo.has('conversations')) this.refreshConversations().catch(() => {});
      if (todo.has('friends')) this.refreshFriends();
      if (todo.has('requests')) this.refreshRequests();
    }, 100);
  }

  /**
   * Fetches the conversation list and merges it: rows are the truth unless we already saw a
   * newer message live. Conversations the tracker does not know yet are seeded at their
   * last seq; known ones catch up (pull whatever the list shows beyond what was delivered).
   */
  refreshConversations() {
    return this.serial('conversations', () => this.loadConversations());
  }

  async loadConversations() {
    const asked = now();
    const { conversations } = await this.api.conversations();
    const seen = new Set();
    const t = now();
    conversations.forEach((row, i) => {
      const id = row.conversation_id;
      if ((this.leftAt.get(id) ?? -Infinity) > asked) return; // stale: we left meanwhile
      seen.add(id);
      const cur = this.conversations.get(id);
      // Empty conversations: keep their place, put new ones on top, else the server's order.
      const activity = row.last_message?.ts_ms ?? (cur ? cur.activity : this.listLoaded ? Date.now() : -i);
      this.conversations.set(id, mergeRow(cur, row, activity));
      if (row.kind === 'direct' && row.peer_id) this.users.name(row.peer_id);
      const delivered = this.tracker.delivered(id);
      if (!this.tracker.convs.has(id)) this.tracker.restore(id, row.last_seq);
      else if (row.fanout === 'read' && id !== this.openId && delivered !== null && row.last_seq - delivered > config.pullPage) {
        // Far behind a large group that is not on screen (a tab asleep over a weekend): jump
        // to its end instead of pulling the whole backlog page by page. Opening it loads the
        // latest page, and older history loads on scroll, as after a fresh page load.
        this.tracker.restore(id, row.last_seq);
        this.timelines.delete(id);
      } else this.applyEffects(this.tracker.onCatchUp([row], t));
    });
    for (const id of [...this.conversations.keys()]) if (!seen.has(id)) this.conversations.delete(id);
    // Failed messages of conversations the user left and did not come back to: nothing shows
    // them any more, and they would count against the outbox bound forever.
    this.outbox.dropFailedOf((id) => !seen.has(id) && this.leftAt.has(id) && this.leftAt.get(id) <= asked);
    this.listLoaded = true;
    this.events.changed('conversations');
    if (this.openId && !this.conversations.has(this.openId)) this.close();
  }

  /** Conversations, most recent activity first. */
  sortedConversations() {
    return [...this.conversations.values()].sort((a, b) => b.activity - a.activity);
  }

  /** The display name of a conversation. */
  title(c) {
    if (!c) return '';
    if (c.kind === 'direct') return c.peer_id ? this.users.label(c.peer_id) : c.name || 'Direct chat';
    return c.name || 'Group';
  }

  refreshFriends() {
    return this.serial('friends', () => this.loadFriends());
  }

  async loadFriends() {
    try {
      const { friends } = await this.api.friends();
      this.friends = new Map(friends.map((f) => [f.user_id, f]));
      for (const f of friends) this.users.set(f.user_id, f.username);
      this.events.changed('friends');
      this.events.changed('conversations');
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== 'network') console.warn('friends', e);
    }
  }

  refreshRequests() {
    return this.serial('requests', () => this.loadRequests());
  }

  async loadRequests() {
    try {
      const asked = now();
      this.requests = await this.api.friendRequests();
      for (const r of this.requests.incoming) {
        if (this.announce.delete(r.request_id)) {
          const from = r.from_id;
          Promise.resolve(this.users.name(from) ?? this.api.user(from).then((u) => u.username))
            .then((n) => this.notify(`${n} sent you a friend request.`, 'info'))
            .catch(() => {});
        }
      }
      // Requests announced before this list was asked for and not in it were answered.
      for (const [id, at] of this.announce) if (at < asked) this.announce.delete(id);
      for (const r of [...this.requests.incoming, ...this.requests.outgoing]) {
        this.users.name(r.from_id);
        this.users.name(r.to_id);
      }
      this.events.changed('requests');
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== 'network') console.warn('requests', e);
    }
  }

  /** We left a group or were removed: forget it. */
  onLeft(id) {
    this.leftAt.set(id, now());
    const c = this.conversations.get(id);
    this.tracker.onLeft(id);
    this.timelines.delete(id);
    this.outbox.failConversation(id, 'You are not a member of this conversation.');
    if (c) {
      this.conversations.delete(id);
      this.events.changed('conversations');
      if (this.listLoaded && !this.leaving?.has(id)) this.notify(`You are no longer a member of ${this.title(c)}.`, 'info');
    }
    if (this.openId === id) this.close();
  }

  // ---------------------------------------------------------------- social actions (throw ApiError)

  async acceptRequest(requestId) {
    const r = await this.api.acceptRequest(requestId);
    await Promise.all([this.refreshRequests(), this.refreshFriends(), this.refreshConversations()]);
    return r.conversation_id;
  }

  async declineRequest(requestId) {
    await this.api.declineRequest(requestId);
    await this.refreshRequests();
  }

  async requestFriend(userId) {
    await this.api.requestFriend(userId);
    await this.refreshRequests();
  }

  /** The direct conversation with a friend (created if needed). */
  async openDirect(peerId) {
    const r = await this.api.openDirect(peerId);
    if (!this.conversations.has(r.conversation_id)) await this.refreshConversations();
    return r.conversation_id;
  }

  async createGroup(name, memberIds) {
    const g = await this.api.createGroup(name, memberIds);
    await this.refreshConversations();
    return g.conversation_id;
  }

  async setMuted(id, muted) {
    const r = await this.api.setMuted(id, muted);
    const c = this.conversations.get(id);
    if (c) c.muted = r.muted;
    this.events.changed('conversations');
  }

  /** Group info and its members (first 1,000), for the group dialog. */
  async groupDetails(id) {
    const [info, page] = await Promise.all([this.api.group(id), this.api.members(id)]);
    return { info, members: page.members, more: !!page.next_after };
  }

  async renameGroup(id, name) {
    await this.api.renameGroup(id, name);
    this.refreshSoon('conversations');
  }

  async addMembers(id, userIds) {
    await this.api.addMembers(id, userIds);
    this.refreshSoon('conversations');
  }

  async removeMember(id, userId) {
    await this.api.removeMember(id, userId);
    this.refreshSoon('conversations');
  }

  async leaveGroup(id) {
    this.leaving = this.leaving || new Set();
    this.leaving.add(id);
    await this.api.removeMember(id, this.me);
    this.onLeft(id);
  }
}

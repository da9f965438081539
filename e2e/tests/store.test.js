// Unit tests of the client's pure modules (no browser): the inbox sequencer, the
// per-conversation tracker (the SDK's merge/dedupe/gap-fill rules, ported), the visible
// timeline window and the outbox. They run in Node next to the browser tests.

import assert from 'node:assert/strict';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const STORE = resolve(dirname(fileURLToPath(import.meta.url)), '../../crates/magpie-server/web/app/js/store');
let tmp;
let Inbox;
let Tracker;
let Timeline;
let Outbox;
let mergeRow;

/** Imports a dependency-free module of the client (copied as .mjs: the web dir has no package.json). */
async function load(name) {
  const dest = join(tmp, name.replace(/\.js$/, '.mjs'));
  await copyFile(join(STORE, name), dest);
  return import(pathToFileURL(dest).href);
}

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'magpie-web-store-'));
  ({ Inbox } = await load('inbox.js'));
  ({ Tracker } = await load('tracker.js'));
  ({ Timeline } = await load('timeline.js'));
  ({ Outbox } = await load('outbox.js'));
  ({ mergeRow } = await load('conversations.js'));
});

after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const A = '10';
const B = '20';
const msg = (conv, seq) => ({ conversation_id: conv, seq, sender_id: '1', client_msg_id: `c${conv}-${seq}`, text: `m${seq}`, ts_ms: seq, kind: 'text' });

/** A tracker plus everything it handed out, checked for exactly-once order at every step. */
function harness(limits = {}) {
  const t = new Tracker(limits);
  const out = new Map();
  let pulls = [];
  const apply = (fx) => {
    for (const m of fx.messages) {
      const got = out.get(m.conversation_id) || [];
      if (got.length) assert.ok(m.seq > got[got.length - 1], `out of order or repeated: ${m.seq} after ${got[got.length - 1]}`);
      got.push(m.seq);
      out.set(m.conversation_id, got);
    }
    pulls.push(...fx.pulls);
    return fx;
  };
  return {
    t,
    event: (conv, seq) => apply(t.onMessage(msg(conv, seq), 0)),
    notify: (conv, last) => apply(t.onNotify(conv, last, 0)),
    answer: (p, timeline) => apply(t.onPulled(p.conversation_id, timeline.filter((s) => s > p.after_seq).slice(0, p.limit).map((s) => msg(p.conversation_id, s)), 0)),
    apply,
    takePulls: () => {
      const p = pulls;
      pulls = [];
      return p;
    },
    got: (conv) => out.get(conv) || [],
  };
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

describe('tracker', () => {
  test('inbox messages in order need no pulls; duplicates are dropped', () => {
    const h = harness();
    for (const s of [1, 2, 2, 3, 1, 3, 4]) h.event(A, s);
    assert.deepEqual(h.got(A), [1, 2, 3, 4]);
    assert.deepEqual(h.takePulls(), []);
  });

  test('reordered events are held and the gap is pulled once', () => {
    const h = harness();
    h.event(A, 1);
    h.event(A, 4);
    h.event(A, 3);
    assert.deepEqual(h.got(A), [1]);
    const pulls = h.takePulls();
    assert.deepEqual(pulls.map((p) => [p.conversation_id, p.after_seq]), [[A, 1]]);
    h.event(A, 2);
    assert.deepEqual(h.got(A), [1, 2, 3, 4]);
    h.answer(pulls[0], [1, 2, 3, 4]);
    assert.deepEqual(h.got(A), [1, 2, 3, 4]);
    assert.deepEqual(h.takePulls(), []);
  });

  test('notifies coalesce into one pull and full pages are followed', () => {
    const h = harness({ pullPage: 3 });
    h.t.restore(A, 2);
    h.notify(A, 5);
    h.notify(A, 8);
    let p = h.takePulls();
    assert.equal(p.length, 1);
    assert.equal(p[0].after_seq, 2);
    const timeline = range(1, 8);
    h.answer(p[0], timeline);
    p = h.takePulls();
    assert.equal(p[0].after_seq, 5);
    h.answer(p[0], timeline);
    p = h.takePulls();
    assert.equal(p[0].after_seq, 8, 'a full page: ask again');
    h.answer(p[0], timeline);
    assert.deepEqual(h.takePulls(), []);
    assert.deepEqual(h.got(A), range(3, 8));
    h.notify(A, 6);
    assert.deepEqual(h.takePulls(), [], 'a stale notify asks for nothing');
  });

  test('a group switching fan-out modes mid-stream still yields every message once', () => {
    const h = harness();
    for (const s of [1, 2, 3]) h.event(A, s);
    h.notify(A, 5);
    const p = h.takePulls();
    assert.deepEqual(p.map((x) => x.after_seq), [3]);
    h.notify(A, 6);
    h.answer(p[0], range(1, 6));
    assert.deepEqual(h.got(A), range(1, 6));
    h.event(A, 9); // back to inbox events, with a gap nobody notified about
    const q = h.takePulls();
    assert.deepEqual(q.map((x) => x.after_seq), [6]);
    h.answer(q[0], range(1, 9));
    assert.deepEqual(h.got(A), range(1, 9));
  });

  test('joining pulls from the beginning and starts at the first visible seq', () => {
    const h = harness();
    h.apply(h.t.onJoined(B, 0));
    const p = h.takePulls();
    assert.deepEqual(p.map((x) => x.after_seq), [0]);
    h.event(B, 9); // an inbox event while the pull is in flight is held
    h.answer(p[0], [7, 8, 9]); // history before joined_seq 7 is not visible
    assert.deepEqual(h.got(B), [7, 8, 9]);
  });

  test('a late answer to a timed-out pull does not stop the catch-up', () => {
    const h = harness({ pullPage: 200, pullTimeoutMs: 5000 });
    const timeline = range(1, 1000);
    h.event(A, 1);
    h.notify(A, 1000);
    const [p1] = h.takePulls();
    assert.equal(p1.after_seq, 1);
    h.apply(h.t.pollTimeouts(5000)); // P1 unanswered: issued again as P2
    const [p2] = h.takePulls();
    assert.equal(p2.after_seq, 1);
    h.answer(p1, timeline); // P1's answer after all: 2..201; P3 goes out after 201
    let next = h.takePulls();
    assert.deepEqual(next.map((p) => p.after_seq), [201]);
    h.answer(p2, timeline); // P2's late answer must not pass for P3's
    assert.deepEqual(h.takePulls(), [], 'P3 is still in flight');
    while (next.length) {
      h.answer(next.pop(), timeline);
      next = h.takePulls();
    }
    assert.deepEqual(h.got(A), timeline, 'every message once, in order');
  });

  test('a page cut at the byte budget is followed by another pull; a short plain page is the end', () => {
    for (const truncated of [true, false]) {
      const h = harness();
      h.apply(h.t.onJoined(B, 0));
      const [p] = h.takePulls();
      assert.equal(p.after_seq, 0);
      h.apply(h.t.onPulled(B, [msg(B, 1), msg(B, 2)], 0, truncated));
      assert.deepEqual(h.got(B), [1, 2]);
      const next = h.takePulls();
      if (truncated) assert.deepEqual(next.map((q) => q.after_seq), [2], 'short but truncated: ask again');
      else assert.deepEqual(next, [], 'short and not truncated: caught up');
    }
  });

  test('catch-up after a reconnect pulls what the list shows beyond what was delivered', () => {
    const h = harness();
    h.t.restore(A, 4);
    h.apply(h.t.onCatchUp([{ conversation_id: A, last_seq: 6, fanout: 'read' }, { conversation_id: B, last_seq: 3, fanout: 'write' }], 0));
    const p = h.takePulls();
    assert.deepEqual(p.map((x) => [x.conversation_id, x.after_seq]), [[A, 4]], 'unknown write-fan-out rows are left to the inbox');
    h.answer(p[0], range(1, 6));
    assert.deepEqual(h.got(A), [5, 6]);
  });

  test('a gap the server cannot fill is skipped, not looped on', () => {
    const h = harness();
    h.event(A, 1);
    h.event(A, 5);
    const p = h.takePulls();
    h.answer(p[0], [1, 5]);
    assert.deepEqual(h.got(A), [1, 5]);
    assert.deepEqual(h.takePulls(), []);
  });

  test('a pull refused as forbidden stops pulling that conversation; other refusals wait for the timeout', () => {
    const t = new Tracker({ pullTimeoutMs: 100 });
    t.restore(A, 1);
    t.restore(B, 1);
    assert.equal(t.onNotify(A, 3, 0).pulls.length, 1);
    assert.equal(t.onNotify(B, 3, 0).pulls.length, 1);
    t.onRefused(A, 'forbidden');
    t.onRefused(B, 'internal');
    const again = t.pollTimeouts(100).pulls.map((p) => p.conversation_id);
    assert.deepEqual(again, [B]);
    assert.equal(t.delivered(A), null);
  });

  test('unanswered pulls are issued again after the timeout and after a reconnect', () => {
    const t = new Tracker({ pullTimeoutMs: 100 });
    t.restore(A, 1);
    assert.equal(t.onNotify(A, 3, 0).pulls.length, 1);
    assert.equal(t.pollTimeouts(50).pulls.length, 0);
    assert.equal(t.pollTimeouts(100).pulls.length, 1);
    t.onDisconnected();
    assert.equal(t.onConnected(120).pulls.length, 1);
  });
});

describe('inbox', () => {
  test('duplicates are dropped and gaps filled page by page before the live event', async () => {
    const fetches = [];
    const delivered = [];
    const server = range(1, 12);
    const inbox = new Inbox(2, async (after) => {
      fetches.push(after);
      return server.filter((c) => c > after).slice(0, 3).map((cursor) => ({ cursor }));
    }, (e) => delivered.push(e.cursor));
    await inbox.accept({ cursor: 2 });
    await inbox.accept({ cursor: 12 });
    assert.deepEqual(delivered, range(3, 12));
    assert.deepEqual(fetches, [2, 5, 8]);
    await inbox.accept({ cursor: 11 });
    await inbox.accept({ cursor: 13 });
    assert.deepEqual(delivered, range(3, 13));
    assert.equal(inbox.last, 13);
  });

  test('an unfillable gap is skipped after no progress', async () => {
    const delivered = [];
    const inbox = new Inbox(1, async () => [], (e) => delivered.push(e.cursor));
    await inbox.accept({ cursor: 5 });
    assert.deepEqual(delivered, [5]);
  });
});

describe('timeline', () => {
  test('merges by seq, drops duplicates and keeps at most the cap', () => {
    const tl = new Timeline(A, 10);
    tl.loadLatest([msg(A, 5), msg(A, 6)], false);
    for (const s of [8, 7, 7, 6, 9]) tl.addLive(msg(A, s));
    assert.deepEqual(tl.msgs.map((m) => m.seq), [5, 6, 7, 8, 9]);
    for (const s of range(10, 20)) tl.addLive(msg(A, s));
    assert.equal(tl.msgs.length, 10);
    assert.equal(tl.oldestSeq(), 11);
    assert.ok(tl.hasOlder);
  });

  test('nothing is kept for a conversation never opened; live messages during the first load are', () => {
    const tl = new Timeline(A, 10);
    assert.equal(tl.addLive(msg(A, 1)), false);
    tl.loading = true;
    tl.addLive(msg(A, 4));
    tl.loadLatest([msg(A, 2), msg(A, 3)], false);
    assert.deepEqual(tl.msgs.map((m) => m.seq), [2, 3, 4]);
  });

  test('an older page is dropped if live messages pushed its anchor out; clear() starts a new epoch', () => {
    const tl = new Timeline(A, 10);
    tl.loadLatest(range(11, 20).map((s) => msg(A, s)), true);
    const before = tl.oldestSeq(); // a loadOlder asks for seqs before 11 ...
    for (const s of range(21, 23)) tl.addLive(msg(A, s)); // ... while 11..13 fall out
    assert.equal(tl.oldestSeq(), 14);
    assert.equal(tl.addOlder(range(1, 10).map((m) => msg(A, m)), true, before), false);
    assert.deepEqual(tl.msgs.map((m) => m.seq), range(14, 23), 'no hole at 11..13');
    assert.equal(tl.addOlder(range(4, 13).map((m) => msg(A, m)), true, tl.oldestSeq()), true);
    const epoch = tl.epoch;
    tl.loading = true;
    tl.clear();
    assert.equal(tl.epoch, epoch + 1, 'answers requested before the clear are recognised');
    assert.equal(tl.loading, false, 'a jump to latest can load at once');
  });

  test('paging back past the cap detaches the window from the live end', () => {
    const tl = new Timeline(A, 10);
    tl.loadLatest(range(21, 28).map((s) => msg(A, s)), true);
    tl.addOlder(range(13, 20).map((s) => msg(A, s)), true);
    assert.equal(tl.msgs.length, 10);
    assert.deepEqual([tl.oldestSeq(), tl.newestSeq()], [13, 22]);
    assert.equal(tl.atLatest, false);
    tl.addLive(msg(A, 29));
    assert.equal(tl.newerAvailable, true);
    assert.equal(tl.newestSeq(), 22, 'not appended while detached');
  });
});

describe('outbox', () => {
  test('a failed send is retried with the same client message id', () => {
    const o = new Outbox();
    const e = o.add(A, 'hi', 0);
    assert.match(e.client_msg_id, /^z[0-9a-f]{32}$/);
    const next = o.add(A, 'again', 0).client_msg_id;
    assert.ok(next > e.client_msg_id, 'ids grow, so the server can skip its dedup lookup');
    o.complete(next);
    o.markWritten(e.client_msg_id);
    assert.deepEqual(o.unwritten(), []);
    assert.deepEqual(o.expire(999, 1000), []);
    assert.equal(o.expire(1000, 1000).length, 1);
    assert.equal(o.get(e.client_msg_id).state, 'failed');
    assert.equal(o.get(e.client_msg_id).error, 'No answer from the server.');
    const refused = o.add(A, 'refused', 0);
    refused.lastError = 'The server cannot take messages right now. Try again shortly.';
    o.expire(1000, 1000);
    assert.equal(o.get(refused.client_msg_id).error, refused.lastError, "the server's last reason is shown");
    assert.deepEqual(o.unwritten(), [], 'failed sends wait for the user');
    o.retry(e.client_msg_id, 2000);
    assert.deepEqual(o.unwritten().map((x) => x.client_msg_id), [e.client_msg_id]);
    o.markWritten(e.client_msg_id);
    o.resetWritten();
    assert.equal(o.unwritten().length, 1, 'written again after a reconnect');
    assert.equal(o.complete(e.client_msg_id).text, 'hi');
    assert.equal(o.complete(e.client_msg_id), undefined);
  });

  test('a refused send is held back until its time, and a retry by the user starts afresh', () => {
    const o = new Outbox();
    const a = o.add(A, 'a', 0);
    const b = o.add(A, 'b', 0);
    o.markWritten(a.client_msg_id);
    o.markWritten(b.client_msg_id);
    assert.equal(o.refused(a.client_msg_id, () => 1000, 'busy'), 1);
    assert.deepEqual(o.unwritten(500), [], 'held until 1000');
    assert.equal(o.nextHold(), 1000);
    assert.deepEqual(o.unwritten(1000).map((e) => e.text), ['a']);
    assert.equal(o.refused(a.client_msg_id, () => 3000, 'still busy'), 2, 'refusals add up');
    assert.equal(o.expire(15_000, 15_000).length, 2);
    assert.equal(o.get(a.client_msg_id).error, 'still busy');
    o.retry(a.client_msg_id, 20_000);
    const e = o.get(a.client_msg_id);
    assert.deepEqual([e.refusals, e.lastError, e.error], [0, null, null]);
    assert.deepEqual(o.unwritten(20_000).map((x) => x.text), ['a'], 'written at once');
  });

  test('a held send holds back the later sends of its conversation only', () => {
    const o = new Outbox();
    const a = o.add(A, 'a', 0);
    o.add(A, 'b', 0);
    o.add(B, 'x', 0);
    assert.equal(o.refused(a.client_msg_id, () => 1000, 'busy'), 1);
    assert.deepEqual(o.unwritten(500).map((e) => e.text), ['x'], "b must not overtake a");
    assert.deepEqual(o.unwritten(1000).map((e) => e.text), ['a', 'b', 'x']);
  });

  test('unsent messages survive a page load with their ids and states', () => {
    let saved = null;
    const storage = { load: () => saved, save: (list) => { saved = JSON.parse(JSON.stringify(list)); } };
    const o = new Outbox(storage, 0);
    const a = o.add(A, 'one', 0);
    const b = o.add(A, 'two', 0);
    const c = o.add(A, 'three', 0);
    o.markWritten(a.client_msg_id);
    o.fail(b.client_msg_id, 'refused');
    o.complete(c.client_msg_id);
    assert.deepEqual(saved.map((x) => [x.client_msg_id, x.state]), [[a.client_msg_id, 'pending'], [b.client_msg_id, 'failed']]);

    // The next page load: a new clock, nothing written yet on the new connection.
    const again = new Outbox(storage, 50_000);
    assert.deepEqual(again.unwritten().map((x) => [x.client_msg_id, x.text]), [[a.client_msg_id, 'one']], 'the pending one is re-sent with its id');
    assert.equal(again.get(b.client_msg_id).state, 'failed', 'a failed one waits for the user');
    assert.equal(again.get(b.client_msg_id).error, 'refused');
    assert.deepEqual(again.expire(50_000 + 999, 1000), [], 'a fresh timeout after the load');
    // Leaving the conversation fails what is pending instead of dropping it.
    const c2 = again.add(A, 'typed after a re-join', 51_000);
    again.failConversation(A, 'left');
    assert.deepEqual(
      saved.map((x) => [x.client_msg_id, x.state, x.error]),
      [[a.client_msg_id, 'failed', 'left'], [b.client_msg_id, 'failed', 'refused'], [c2.client_msg_id, 'failed', 'left']],
      'kept, and shown with a retry if the conversation comes back',
    );
    again.dropFailedOf((id) => id !== A);
    assert.equal(again.entries.size, 3, 'only the named conversations lose their failed entries');
    assert.equal(again.retry(c2.client_msg_id, 52_000).client_msg_id, c2.client_msg_id, 'same id on retry');
    again.complete(a.client_msg_id);
    again.dropFailedOf((id) => id === A);
    assert.deepEqual(saved.map((x) => x.client_msg_id), [c2.client_msg_id], 'the failed one of A is dropped, the pending retry stays');
    again.complete(c2.client_msg_id);
    assert.deepEqual(saved, [], 'nothing left to restore');

    // Garbage in storage is ignored, not fatal.
    saved = [null, { client_msg_id: 5 }, 'x'];
    assert.equal(new Outbox(storage, 0).entries.size, 0);
    saved = { not: 'a list' };
    assert.equal(new Outbox(storage, 0).entries.size, 0);
  });
});

describe('conversation rows', () => {
  const row = (o) => ({ conversation_id: A, kind: 'direct', name: '', last_seq: 5, last_message: msg(A, 5), read_seq: 2, unread_count: 3, muted: false, ...o });

  test('the list is the truth for a conversation seen for the first time', () => {
    const r = mergeRow(undefined, row(), 5);
    assert.equal(r.unread_count, 3);
    assert.equal(r.activity, 5);
  });

  test('a message seen live after the list was computed keeps its preview and count', () => {
    const cur = { ...row({ last_seq: 6, last_message: msg(A, 6), unread_count: 4 }), activity: 6 };
    const r = mergeRow(cur, row({ muted: true }), 5);
    assert.deepEqual([r.last_seq, r.unread_count, r.activity, r.muted], [6, 4, 6, true]);
  });

  test('a read mark newer than the list is not undone', () => {
    const cur = { ...row({ read_seq: 5, unread_count: 0 }), activity: 5 };
    assert.equal(mergeRow(cur, row(), 5).unread_count, 0);
    const partly = { ...row({ read_seq: 4, unread_count: 1 }), activity: 5 };
    const r = mergeRow(partly, row(), 5);
    assert.deepEqual([r.read_seq, r.unread_count], [4, 1]);
  });
});

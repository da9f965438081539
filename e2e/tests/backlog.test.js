// A tab that slept while a large (read-fan-out) group it is not showing moved far ahead jumps
// to the group's end when it wakes, instead of pulling the whole backlog page by page; opening
// the group then shows its latest messages.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launch, person, unexpectedErrors, CONNECTION_FAILURES } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import { convRow, friendsInChat, online, openConv } from '../lib/ui.js';

let server;
let browser;

before(async () => {
  // Every group of two or more members uses read fan-out.
  server = await MagpieServer.start({ MAGPIE_FANOUT_WRITE_MAX: '1' });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

async function call(token, method, path, body) {
  const r = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(r.ok, `${method} ${path}: ${r.status}`);
  return r.json();
}

const session = (page) => page.evaluate(() => JSON.parse(sessionStorage.getItem('magpie.session')));

test('a tab far behind a large group it is not showing jumps to the end', async () => {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const a = alice.page;
  await friendsInChat([alice, bob], ['ivy', 'jon']);
  const [sa, sb] = [await session(a), await session(bob.page)];

  // Alice's socket goes through this route: it counts her pulls, and while `asleep` it
  // passes nothing from the server (as a suspended tab would get nothing).
  let asleep = false;
  let pageSide = null;
  const pulls = [];
  await a.routeWebSocket(/\/v1\/ws/, (ws) => {
    pageSide = ws;
    const upstream = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (f.type === "pull") pulls.push(f);
      upstream.send(m);
    });
    upstream.onMessage((m) => {
      if (!asleep) ws.send(m);
    });
  });
  await a.reload();
  await online(a);
  await openConv(a, 'jon');

  const group = await call(sa.token, 'POST', '/v1/groups', { name: 'Town hall', member_ids: [sb.user_id] });
  const conv = group.conversation_id;
  await call(sb.token, 'POST', `/v1/conversations/${conv}/messages`, { client_msg_id: 'm-first', text: 'first' });
  await convRow(a, 'Town hall').filter({ hasText: 'first' }).waitFor();

  // The tab sleeps while 450 messages go to the group.
  asleep = true;
  const N = 450;
  for (let i = 0; i < N; i += 15) {
    await Promise.all(Array.from({ length: Math.min(15, N - i) }, (_, k) =>
      call(sb.token, 'POST', `/v1/conversations/${conv}/messages`, { client_msg_id: `m-${i + k}`, text: `m${i + k}` })));
  }
  // Sent alone, so that it is the newest (the ones above raced each other).
  await call(sb.token, 'POST', `/v1/conversations/${conv}/messages`, { client_msg_id: 'm-last', text: 'the last one' });
  // It wakes on a new connection.
  asleep = false;
  pulls.length = 0;
  pageSide.close();
  await online(a);
  await convRow(a, 'Town hall').filter({ hasText: 'the last one' }).waitFor({ timeout: 20_000 });
  await a.waitForTimeout(1_500);
  const groupPulls = pulls.filter((p) => p.conversation_id === conv);
  assert.ok(groupPulls.length <= 1, `pulled the backlog: ${JSON.stringify(groupPulls)}`);

  // Opening the group shows its latest messages.
  await openConv(a, 'Town hall');
  await a.locator('#msg-list .msg .msg-text', { hasText: 'the last one' }).waitFor();
  assert.deepEqual(unexpectedErrors(a, CONNECTION_FAILURES), []);
  await alice.context.close();
  await bob.context.close();
});

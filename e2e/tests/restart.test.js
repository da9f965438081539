// The server restarts mid-conversation. Every page shows the connection drop, reconnects with
// backoff, resumes from its stored cursor, re-sends what was unanswered (same client message
// id) and ends up showing every message exactly once, in order. alice has two tabs, which
// behave as two devices.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { CONNECTION_FAILURES, launch, person, shot, tab, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import {
  acceptFrom, convRow, expectTexts, login, online, openConv, ownMessage, register, requestFriend,
  send, sendAndWait,
} from '../lib/ui.js';

let server;
let browser;

before(async () => {
  server = await MagpieServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test('a restart mid-conversation loses nothing and duplicates nothing', async () => {
  // alice gives up on unanswered sends quickly (to show failed → retry); bob waits long
  // enough for his queued message to go out by itself after the restart.
  const alice = await person(browser, server, { config: { sendTimeoutMs: 1500 } });
  const bob = await person(browser, server, { config: { sendTimeoutMs: 120_000 } });
  const a = alice.page;
  const b = bob.page;
  await register(a, 'alice');
  await register(b, 'bob');
  await requestFriend(a, 'bob');
  await acceptFrom(b, 'alice');

  // alice's second tab is a second device (its own login, token and cursor).
  const a2 = await tab(alice.context, server);
  await login(a2, 'alice');
  const devices = await Promise.all([a, a2].map((p) => p.evaluate(() => JSON.parse(sessionStorage.getItem('magpie.session')).device_id)));
  assert.notEqual(devices[0], devices[1], 'two tabs, two devices');

  await openConv(a, 'bob');
  await openConv(b, 'alice');
  await openConv(a2, 'bob');
  await sendAndWait(a, 'before 1');
  await sendAndWait(b, 'before 2');
  await expectTexts(a2, ['before 1', 'before 2']);

  // Stop the server: every page notices and waits to reconnect.
  await server.stop();
  for (const p of [a, a2, b]) await p.locator('#conn-state[data-state=waiting]').waitFor();
  await shot(a, '10-reconnecting');

  // While it is down: bob's message waits (pending); alice's times out and fails.
  await send(b, 'queued while down');
  await ownMessage(b, 'queued while down').and(b.locator('[data-state=pending]')).waitFor();
  await send(a, 'failed while down');
  const failed = ownMessage(a, 'failed while down');
  await failed.and(a.locator('[data-state=failed]')).waitFor();
  await failed.getByRole('button', { name: /^Retry sending/ }).waitFor();
  const failedId = await failed.getAttribute('data-cmid');
  await shot(a, '11-send-failed');

  // Restart on the same port and data dir; all three pages reconnect by themselves.
  await server.restart();
  for (const p of [a, a2, b]) await online(p);

  // bob's pending message goes out on its own; alice retries hers with the same id.
  await ownMessage(b, 'queued while down').and(b.locator('[data-state=sent]')).waitFor();
  await expectTexts(a, ['before 1', 'before 2', 'queued while down', 'failed while down']);
  await failed.getByRole('button', { name: /^Retry sending/ }).click();
  await failed.and(a.locator('[data-state=sent]')).waitFor();
  assert.equal(await failed.getAttribute('data-cmid'), failedId, 'the retry reused the client message id');

  // The conversation goes on after the restart.
  await sendAndWait(b, 'after 1');
  await sendAndWait(a2, 'after 2 (from the second tab)');
  const all = ['before 1', 'before 2', 'queued while down', 'failed while down', 'after 1', 'after 2 (from the second tab)'];
  for (const p of [a, a2, b]) await expectTexts(p, all);
  await b.locator('#receipt', { hasText: 'Read' }).waitFor();
  await shot(b, '12-after-restart');

  // Another restart, with no one sending: nothing is replayed twice.
  await server.restart();
  for (const p of [a, a2, b]) await online(p);
  await sendAndWait(a, 'after second restart');
  for (const p of [a, a2, b]) await expectTexts(p, [...all, 'after second restart']);

  // A reload resumes from the tab's stored session and cursor (same device, no login).
  await a2.reload();
  await online(a2);
  await openConv(a2, 'bob');
  await expectTexts(a2, [...all, 'after second restart']);
  assert.equal(await a2.evaluate(() => JSON.parse(sessionStorage.getItem('magpie.session')).device_id), devices[1]);
  await convRow(a2, 'bob').waitFor();

  for (const p of [a, a2, b]) assert.deepEqual(unexpectedErrors(p, CONNECTION_FAILURES), []);
  await alice.context.close();
  await bob.context.close();
});

// A message typed while it cannot reach the server survives a reload of the tab: the next page
// load restores it from storage and sends it with the same client message id, so it is stored
// exactly once. (The socket is routed through Playwright, which swallows `send` frames while
// the test says so; everything else passes through.)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { CONNECTION_FAILURES, launch, person, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import {
  acceptFrom, expectTexts, online, openConv, ownMessage, register, requestFriend, send, sendAndWait,
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

test('an unsent message survives a reload and is stored once', async () => {
  const alice = await person(browser, server, { config: { sendTimeoutMs: 120_000 } });
  const bob = await person(browser, server);
  const a = alice.page;
  const b = bob.page;
  await register(a, 'alice');
  await register(b, 'bob');
  await requestFriend(a, 'bob');
  await acceptFrom(b, 'alice');
  await openConv(a, 'bob');
  await openConv(b, 'alice');
  await sendAndWait(a, 'first');

  // From the next page load on, alice's socket goes through this route.
  let swallowSends = true;
  let swallowed = 0;
  await a.routeWebSocket(/\/v1\/ws/, (ws) => {
    const upstream = ws.connectToServer();
    ws.onMessage((m) => {
      if (swallowSends && String(m).includes('"type":"send"')) {
        swallowed += 1;
        return;
      }
      upstream.send(m);
    });
  });
  await a.reload();
  await online(a);
  await openConv(a, 'bob');
  await send(a, 'typed before the reload');
  const pending = ownMessage(a, 'typed before the reload');
  await pending.and(a.locator('[data-state=pending]')).waitFor();
  const id = await pending.getAttribute('data-cmid');
  assert.ok(swallowed >= 1, 'the send was written and swallowed');

  // Reload with the socket working again: the message is restored and sent, same id.
  swallowSends = false;
  await a.reload();
  await online(a);
  await openConv(a, 'bob');
  const restored = ownMessage(a, 'typed before the reload');
  await restored.and(a.locator('[data-state=sent]')).waitFor();
  assert.equal(await restored.getAttribute('data-cmid'), id, 'the same client message id');
  await expectTexts(a, ['first', 'typed before the reload']);
  await expectTexts(b, ['first', 'typed before the reload']);
  const left = await a.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('magpie.outbox.')));
  assert.deepEqual(left, [], 'nothing left to re-send');

  for (const p of [a, b]) assert.deepEqual(unexpectedErrors(p, CONNECTION_FAILURES), []);
  await alice.context.close();
  await bob.context.close();
});

// A message typed while it cannot reach the server survives a reload of the tab: the next page
// load restores it from storage and sends it with the same client message id, so it is stored
// exactly once. (The socket is routed through Playwright, which swallows `send` frames while
// the test says so; everything else passes through.)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { CONNECTION_FAILURES, launch, person, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import {
  expectTexts, friendsInChat, login, online, openConv, ownMessage, send, sendAndWait,
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
  await friendsInChat([alice, bob], ['alice', 'bob']);
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

test('a new device starts at the inbox head and loads history over HTTP', async () => {
  const carol = await person(browser, server);
  const dave = await person(browser, server);
  const c = carol.page;
  const d = dave.page;
  await friendsInChat([carol, dave], ['carol', 'dave']);
  const earlier = ['one', 'two', 'three'];
  for (const t of earlier) await sendAndWait(c, t);
  await expectTexts(d, earlier);

  // carol logs in on a new device (a new browser context); record what its socket says.
  const device = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  const frames = { ready: null, syncs: [] };
  const page = await device.newPage();
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const upstream = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (f.type === 'sync') frames.syncs.push(f.cursor);
      upstream.send(m);
    });
    upstream.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (f.type === 'ready' && !frames.ready) frames.ready = f;
      ws.send(m);
    });
  });
  await page.goto(server.url);
  await login(page, 'carol');
  await online(page);
  assert.equal(frames.ready.cursor, 0, 'a new device has no cursor');
  assert.ok(frames.ready.inbox_head >= earlier.length, JSON.stringify(frames.ready));
  assert.deepEqual(frames.syncs, [frames.ready.inbox_head], 'it syncs from the head, replaying nothing');
  await openConv(page, 'dave');
  await expectTexts(page, earlier);
  await sendAndWait(page, 'from the new device');
  await expectTexts(d, [...earlier, 'from the new device']);

  await device.close();
  await carol.context.close();
  await dave.context.close();
});

test('a cursor past the server inbox head (a restored backup) resumes from the head', async () => {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const a = alice.page;
  const b = bob.page;
  await friendsInChat([alice, bob], ['erin', 'frank']);
  await sendAndWait(a, 'before the restore');
  // As if the server had been restored from an older backup: the tab's stored cursor is far
  // past anything the server's inbox holds, and a sync from it would be refused. Set before
  // the page's scripts run (the page saves its own cursor when it unloads).
  // The tab stores its cursor once its ack debounce runs out.
  await a.waitForFunction(() => Object.keys(localStorage).some((k) => k.startsWith('magpie.cursor.')));
  await a.addInitScript(() => {
    for (const k of Object.keys(localStorage)) {
      if (k.startsWith('magpie.cursor.')) localStorage.setItem(k, '1000000');
    }
  });
  const logged = [];
  a.on('console', (m) => logged.push(m.text()));
  await a.reload();
  await online(a);
  await openConv(a, 'frank');
  await expectTexts(a, ['before the restore']);
  // Live events flow again: the client resumed from the server's inbox head.
  await sendAndWait(b, 'after the restore');
  await expectTexts(a, ['before the restore', 'after the restore']);
  assert.ok(logged.some((t) => t.includes("past the server's head")), 'the client said why');
  assert.deepEqual(unexpectedErrors(a, /$^/), []);
});

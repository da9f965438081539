// The conversation list fetched after connecting (the catch-up of read-fan-out groups, and the
// list itself on a fresh page load) is fetched again, backing off, when it fails: here the
// server answers it 503 twice after a reload, and the list still appears by itself.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launch, person, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import { convRow, friendsInChat, online, sendAndWait } from '../lib/ui.js';

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

test('a failed conversation list fetch after connecting is retried', async () => {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const a = alice.page;
  await friendsInChat([alice, bob], ['gina', 'hank']);
  await sendAndWait(a, 'hello');

  let asked = 0;
  let failed = 0;
  await a.route(/\/v1\/conversations$/, async (route) => {
    if (route.request().method() !== 'GET') return route.continue();
    asked += 1;
    if (failed < 2) {
      failed += 1;
      return route.fulfill({
        status: 503,
        contentType: 'application/json',
        body: JSON.stringify({ error: { code: 'unavailable', message: 'busy' } }),
      });
    }
    return route.continue();
  });
  await a.reload();
  await online(a);
  await convRow(a, 'hank').waitFor({ timeout: 20_000 });
  assert.equal(failed, 2);
  assert.ok(asked >= 3, `asked ${asked} times`);
  assert.deepEqual(unexpectedErrors(a, /status of 503/), []);
  await alice.context.close();
  await bob.context.close();
});

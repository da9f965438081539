// Scroll-back paging and bounded memory: a long history loads page by page as the user
// scrolls up; with a small cap, scrolling far back detaches the window from the live end and
// "Jump to latest" brings the newest messages back (and live messages still arrive).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { account, befriend, sendAll } from '../lib/api.js';
import { launch, person, shot } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import { eventually, expectTexts, login, openConv, texts } from '../lib/ui.js';

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

const TOTAL = 130;
const all = Array.from({ length: TOTAL }, (_, i) => `message ${String(i + 1).padStart(3, '0')}`);

/** Scrolls the message log to the top. */
async function scrollTop(page) {
  await page.locator('#messages').evaluate((el) => {
    el.scrollTop = 0;
  });
}

test('scroll-back pages through the whole history in order', async () => {
  const alice = await account(server, 'alice');
  const bob = await account(server, 'bob');
  const conv = await befriend(server, alice, bob);
  await sendAll(server, alice, conv, all);

  const { context, page } = await person(browser, server);
  await login(page, 'bob');
  await openConv(page, 'alice');
  // The newest page (50) first, scrolled to the bottom, with the unread badge cleared.
  await expectTexts(page, all.slice(-50));
  await page.locator('#load-older').waitFor();
  // Scrolling up loads older pages until the beginning.
  await eventually(async () => {
    await scrollTop(page);
    assert.ok(await page.locator('#older-note', { hasText: 'beginning of the conversation' }).isVisible());
  }, 20_000);
  await expectTexts(page, all);
  await shot(page, '13-history');
  assert.deepEqual(page.errors, []);
  await context.close();
});

test('a capped window detaches when scrolled far back and jumps back to the latest', async () => {
  const carol = await account(server, 'carol');
  const dave = await account(server, 'dave');
  const conv = await befriend(server, carol, dave);
  await sendAll(server, carol, conv, all);

  const { context, page } = await person(browser, server, { config: { messagesPerConversationMax: 60, historyPage: 40 } });
  await login(page, 'dave');
  await openConv(page, 'carol');
  await expectTexts(page, all.slice(-40));
  // Scroll back until the oldest message is in: at most 60 rows are ever kept.
  await eventually(async () => {
    await scrollTop(page);
    const t = await texts(page);
    assert.ok(t.length <= 60, `${t.length} rows kept`);
    assert.equal(t[0], all[0]);
  }, 20_000);
  assert.ok((await texts(page)).length <= 60);
  // The newest messages were dropped from the window: a live message does not append, but
  // the jump button appears and brings the window back to the live end.
  await sendAll(server, carol, conv, ['live while scrolled back']);
  await page.locator('#jump-latest', { hasText: 'Jump to latest' }).click();
  await eventually(async () => {
    const t = await texts(page);
    assert.equal(t[t.length - 1], 'live while scrolled back');
    assert.deepEqual(t, [...all, 'live while scrolled back'].slice(-t.length));
  });
  assert.deepEqual(page.errors, []);
  await context.close();
});

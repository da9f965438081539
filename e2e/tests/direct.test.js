// Two people register in two browser contexts, become friends and chat both ways; unread
// badges, typing, presence and read receipts update live. Also checks phone width.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { account, call } from '../lib/api.js';
import { launch, person, shot } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import {
  acceptFrom, convRow, eventually, expectTexts, expectUnread, openConv, ownMessage, register,
  requestFriend, send, sendAndWait, showChats, showPeople,
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

test('two people befriend each other and chat with live badges and receipts', async () => {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const a = alice.page;
  const b = bob.page;

  await a.getByRole('heading', { name: 'Log in to Magpie' }).waitFor();
  await shot(a, '01-login');
  await register(a, 'alice');
  await register(b, 'bob');

  // Friend request: alice finds bob by username; bob sees it live and accepts.
  await requestFriend(a, 'bob');
  await b.locator('#people-badge', { hasText: '1' }).waitFor();
  await showPeople(b);
  await b.locator('#incoming-requests .person', { hasText: 'alice' }).waitFor();
  await shot(b, '02-friend-request');
  await acceptFrom(b, 'alice');

  // A request bob declines disappears, and nothing else changes.
  const carol = await account(server, 'carol');
  const bobUser = await call(server, 'GET', '/v1/users?username=bob', { token: carol.token });
  await call(server, 'POST', '/v1/friends/requests', { token: carol.token, body: { user_id: bobUser.user_id } });
  await b.getByRole('button', { name: 'Decline friend request from carol' }).click();
  await b.locator('#incoming-requests .person').first().waitFor({ state: 'detached' });
  assert.equal(await b.locator('#friends-list .person', { hasText: 'carol' }).count(), 0);

  // The direct conversation shows up on both sides, with presence dots.
  await showChats(a);
  await convRow(a, 'bob').waitFor();
  await convRow(a, 'bob').locator('.presence.on').waitFor();
  await showChats(b);
  await convRow(b, 'alice').locator('.presence.on').waitFor();

  // alice writes while bob looks at the list: his badge counts up live.
  await openConv(a, 'bob');
  await sendAndWait(a, 'Hi Bob!');
  await expectUnread(b, 'alice', 1);
  await sendAndWait(a, 'Are you there?');
  await expectUnread(b, 'alice', 2);
  await convRow(b, 'alice').locator('.conv-preview', { hasText: 'Are you there?' }).waitFor();
  assert.equal(await b.title(), '(1) Magpie');
  await shot(b, '03-list-unread');
  assert.equal(await a.locator('#receipt').count(), 0, 'nothing read yet');

  // bob opens the chat: the badge clears and alice sees "Read" live.
  await openConv(b, 'alice');
  await expectTexts(b, ['Hi Bob!', 'Are you there?']);
  await expectUnread(b, 'alice', 0);
  await a.locator('#receipt', { hasText: 'Read' }).waitFor();

  // Typing indicator, then bob answers; alice (chat open) reads at once, bob sees "Read".
  await b.locator('#composer-input').pressSequentially('Hey', { delay: 20 });
  await a.locator('#typing', { hasText: 'bob is typing…' }).waitFor();
  await b.locator('#composer-input').fill('');
  await send(b, 'Hey Alice! Yes, here.');
  await expectTexts(a, ['Hi Bob!', 'Are you there?', 'Hey Alice! Yes, here.']);
  await eventually(async () => assert.equal(await a.locator('#typing').textContent(), ''));
  await b.locator('#receipt', { hasText: 'Read' }).waitFor();
  await expectUnread(a, 'bob', 0);

  // A few more both ways; every message once, in the same order on both sides.
  await sendAndWait(a, 'Lunch at 12?');
  await sendAndWait(b, 'Sounds good 🍜');
  await sendAndWait(a, 'See you <b>there</b>');
  const all = ['Hi Bob!', 'Are you there?', 'Hey Alice! Yes, here.', 'Lunch at 12?', 'Sounds good 🍜', 'See you <b>there</b>'];
  await expectTexts(a, all);
  await expectTexts(b, all);
  // User text is text, never markup.
  assert.equal(await a.locator('#msg-list b').count(), 0);
  await b.locator('#receipt', { hasText: 'Read' }).waitFor();
  await a.locator('#receipt', { hasText: 'Read' }).waitFor();
  assert.equal(await ownMessage(a, 'See you <b>there</b>').getAttribute('data-state'), 'sent');
  await shot(a, '04-chat-desktop');

  // Phone width: one pane at a time, with a back button.
  await b.setViewportSize({ width: 390, height: 780 });
  await shot(b, '05-phone-chat');
  await b.getByRole('button', { name: 'Back to conversations' }).click();
  await convRow(b, 'alice').waitFor();
  assert.equal(await b.locator('#chat-view').isVisible(), false);
  await shot(b, '06-phone-list');
  await convRow(b, 'alice').click();
  await b.locator('#composer-input').waitFor();
  await expectTexts(b, all);

  // Keyboard: the composer has focus after opening; Enter sends.
  await b.keyboard.type('typed with the keyboard');
  await b.keyboard.press('Enter');
  await expectTexts(a, [...all, 'typed with the keyboard']);

  // Muting: the row is marked, its badge greys out and the tab title does not count it.
  await b.locator('#mute-toggle').click();
  await b.locator('#mute-toggle[aria-pressed=true]', { hasText: 'Unmute' }).waitFor();
  await b.getByRole('button', { name: 'Back to conversations' }).click();
  await convRow(b, 'alice').locator('.muted-mark').waitFor();
  await sendAndWait(a, 'psst');
  await convRow(b, 'alice').locator('.badge.badge-muted', { hasText: '1' }).waitFor();
  assert.equal(await b.title(), 'Magpie');
  await shot(b, '07-phone-muted');

  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  await alice.context.close();
  await bob.context.close();
});

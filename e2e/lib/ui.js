// What a person does in the web client, as Playwright steps, plus polling assertions.
// Every wait is on a DOM condition; nothing sleeps for a fixed time.

import assert from 'node:assert/strict';

export const PASSWORD = 'correct horse 1';

/** Retries `fn` (an async assertion) until it passes or `timeout` ms have passed. */
export async function eventually(fn, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function register(page, username) {
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await online(page);
}

export async function login(page, username) {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  await online(page);
}

/** Waits until the connection indicator says connected. */
export async function online(page) {
  await page.locator('#conn-state[data-state=online]').waitFor();
}

export async function showPeople(page) {
  await page.locator('#tab-people').click();
}

export async function showChats(page) {
  await page.locator('#tab-chats').click();
}

export async function requestFriend(page, username) {
  await showPeople(page);
  await page.locator('#people-search').fill(username);
  await page.locator('#people-search').press('Enter');
  await page.getByRole('button', { name: `Send a friend request to ${username}` }).click();
  await page.locator('#outgoing-requests .person', { hasText: username }).waitFor();
}

export async function acceptFrom(page, username) {
  await showPeople(page);
  await page.getByRole('button', { name: `Accept friend request from ${username}` }).click();
  await page.locator('#friends-list .person', { hasText: username }).waitFor();
}

/**
 * Two people (`person` results) who register as `a` and `b`, become friends and each open
 * their direct conversation: the usual start of a chat test.
 */
export async function friendsInChat([pa, pb], [a, b]) {
  await register(pa.page, a);
  await register(pb.page, b);
  await requestFriend(pa.page, b);
  await acceptFrom(pb.page, a);
  await openConv(pa.page, b);
  await openConv(pb.page, a);
}

function exact(text) {
  return new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
}

/** The conversation-list row titled `title`. */
export function convRow(page, title) {
  return page.locator('#conv-list .conv', { has: page.locator('.conv-name', { hasText: exact(title) }) });
}

export async function openConv(page, title) {
  await showChats(page);
  await convRow(page, title).click();
  await page.locator('#chat-title', { hasText: exact(title) }).waitFor();
}

/** Types `text` in the composer and presses Enter. */
export async function send(page, text) {
  const input = page.locator('#composer-input');
  await input.fill(text);
  await input.press('Enter');
}

/** Our message with exactly `text` in the open chat. */
export function ownMessage(page, text) {
  return page.locator('#msg-list .msg-own', { has: page.locator('.msg-text', { hasText: exact(text) }) });
}

/** Sends and waits until the server acknowledged it. */
export async function sendAndWait(page, text) {
  await send(page, text);
  await page.locator('#msg-list .msg-own[data-state=sent]', { has: page.locator('.msg-text', { hasText: exact(text) }) }).waitFor();
}

/** The texts of every row of the open chat, in order (system messages included). */
export async function texts(page) {
  return page.locator('#msg-list .msg .msg-text').allTextContents();
}

/** Waits until the open chat shows exactly `expected`, in order. */
export async function expectTexts(page, expected, timeout) {
  await eventually(async () => assert.deepEqual(await texts(page), expected), timeout);
}

/** The unread badge of a conversation row ('' when none). */
export async function unreadOf(page, title) {
  return convRow(page, title).getAttribute('data-unread');
}

export async function expectUnread(page, title, n) {
  await eventually(async () => assert.equal(await unreadOf(page, title), String(n)));
}

// The server is restored from an older backup while both pages stay open. Their cursors are
// past the restored inbox and their conversations hold seqs that the restored timeline hands
// out again: each page starts its conversations afresh, so messages sent after the restore
// show up (before, they were dropped as already seen) and the lost ones disappear.

import assert from 'node:assert/strict';
import { cp, rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';

import { CONNECTION_FAILURES, launch, person, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import { convRow, expectTexts, friendsInChat, online, sendAndWait } from '../lib/ui.js';

let server;
let browser;
let backup;

before(async () => {
  server = await MagpieServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
  if (backup) await rm(backup, { recursive: true, force: true });
});

test('open pages keep working after the server is restored from an older backup', async () => {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const a = alice.page;
  const b = bob.page;
  await friendsInChat([alice, bob], ['alice', 'bob']);
  await sendAndWait(a, 'before 1');
  await sendAndWait(b, 'before 2');
  await expectTexts(a, ['before 1', 'before 2']);

  // A backup of the stopped server's data directory.
  await server.stop();
  backup = `${server.dataDir}-backup`;
  await cp(server.dataDir, backup, { recursive: true });
  await server.spawn();
  for (const p of [a, b]) await online(p);

  // Seqs 3 and 4, which the restore will lose.
  await sendAndWait(a, 'lost 3');
  await sendAndWait(b, 'lost 4');
  for (const p of [a, b]) await expectTexts(p, ['before 1', 'before 2', 'lost 3', 'lost 4']);

  // The restore: the pages reconnect to a server whose timelines end at seq 2.
  await server.stop();
  await rm(server.dataDir, { recursive: true, force: true });
  await cp(backup, server.dataDir, { recursive: true });
  await server.spawn();
  for (const p of [a, b]) await online(p);

  // The next messages take seqs 3 and 4 again; both pages show them, and only them.
  await sendAndWait(b, 'after the restore');
  await sendAndWait(a, 'and again');
  for (const p of [a, b]) await expectTexts(p, ['before 1', 'before 2', 'after the restore', 'and again']);
  // The conversation rows follow the restored timeline too: the newest message is the preview
  // on both sides (the rows' old seqs 3 and 4 do not hide seqs 3 and 4 of the restore).
  await convRow(a, 'bob').filter({ hasText: 'and again' }).waitFor();
  await convRow(b, 'alice').filter({ hasText: 'and again' }).waitFor();

  for (const p of [a, b]) assert.deepEqual(unexpectedErrors(p, CONNECTION_FAILURES), []);
  await alice.context.close();
  await bob.context.close();
});

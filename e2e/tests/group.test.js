// A group of three: created in the browser, a member added, one removed, renamed, one
// leaves; everyone's view shows the system messages in order among the chat, each once.
// Run twice: with write fan-out (inbox events) and with read fan-out (notify + pull, forced
// by MAGPIE_FANOUT_WRITE_MAX=2), which the client must merge the same way.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { launch, LOST_ACCESS, person, shot, unexpectedErrors } from '../lib/browser.js';
import { MagpieServer } from '../lib/server.js';
import { convRow, expectTexts, openConv, register, sendAndWait, showChats } from '../lib/ui.js';

let browser;

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

for (const mode of ['write', 'read']) {
  describe(`${mode} fan-out`, () => {
    let server;
    before(async () => {
      server = await MagpieServer.start(mode === 'read' ? { MAGPIE_FANOUT_WRITE_MAX: '2' } : {});
    });
    after(async () => {
      await server?.dispose();
    });

    test('create, add, remove, rename and leave, with system messages in order', async () => {
      const people = {};
      for (const name of ['alice', 'bob', 'carol', 'dave']) {
        people[name] = await person(browser, server);
        await register(people[name].page, name);
      }
      const { alice: { page: a }, bob: { page: b }, carol: { page: c }, dave: { page: d } } = people;

      // alice creates "Weekend" with bob and carol (groups need no friendship).
      await showChats(a);
      await a.getByRole('button', { name: 'New group' }).click();
      await a.getByLabel('Group name').fill('Weekend');
      await a.getByLabel('Others, by username').fill('bob, carol');
      await a.getByRole('button', { name: 'Create group' }).click();
      await a.locator('#chat-title', { hasText: 'Weekend' }).waitFor();
      await expectTexts(a, ['You created the group “Weekend” with bob and carol']);
      if (mode === 'read') {
        const info = await a.evaluate(async () => {
          const s = JSON.parse(sessionStorage.getItem('magpie.session'));
          const r = await fetch('/v1/conversations', { headers: { Authorization: `Bearer ${s.token}` } });
          return (await r.json()).conversations[0];
        });
        assert.equal(info.fanout, 'read', 'the server runs this group in read fan-out');
      }

      // Everyone chats; the group appears live in bob's and carol's lists.
      await openConv(b, 'Weekend');
      await openConv(c, 'Weekend');
      await sendAndWait(a, 'hello group');
      await expectTexts(b, ['alice created the group “Weekend” with you and carol', 'hello group']);
      await sendAndWait(b, 'hi all');
      await expectTexts(c, ['alice created the group “Weekend” with bob and you', 'hello group', 'hi all']);
      await sendAndWait(c, 'hey');

      // alice adds dave, removes carol and renames the group, from the group dialog.
      await a.getByRole('button', { name: 'Group settings' }).click();
      const dialog = a.getByRole('dialog');
      await dialog.locator('#member-list .person', { hasText: 'carol' }).waitFor();
      await dialog.getByLabel('Add members').fill('dave');
      await dialog.getByRole('button', { name: 'Add', exact: true }).click();
      await dialog.locator('#member-list .person', { hasText: 'dave' }).waitFor();
      await dialog.getByRole('button', { name: 'Remove carol from the group' }).click();
      await dialog.locator('#member-list .person', { hasText: 'carol' }).waitFor({ state: 'detached' });
      await dialog.getByLabel('Group name').fill('Weekend plans');
      await dialog.getByRole('button', { name: 'Rename' }).click();
      await a.locator('#dialog-title', { hasText: 'Weekend plans' }).waitFor();
      if (mode === 'write') await shot(a, '09-group-settings');
      await a.keyboard.press('Escape');
      await dialog.waitFor({ state: 'detached' });

      // carol lost access: the group leaves her list and her open chat closes.
      await convRow(c, 'Weekend').waitFor({ state: 'detached' });
      await c.locator('#chat-empty').waitFor();

      // dave sees the group from the moment he joined.
      await openConv(d, 'Weekend plans');
      await expectTexts(d, ['alice added you', 'alice removed carol', 'alice renamed the group to “Weekend plans”']);
      await sendAndWait(d, 'thanks for adding me');

      const forBob = [
        'alice created the group “Weekend” with you and carol',
        'hello group',
        'hi all',
        'hey',
        'alice added dave',
        'alice removed carol',
        'alice renamed the group to “Weekend plans”',
        'thanks for adding me',
      ];
      await expectTexts(b, forBob);
      await b.locator('#chat-title', { hasText: 'Weekend plans' }).waitFor();
      await expectTexts(a, [
        'You created the group “Weekend” with bob and carol',
        'hello group',
        'hi all',
        'hey',
        'You added dave',
        'You removed carol',
        'You renamed the group to “Weekend plans”',
        'thanks for adding me',
      ]);

      // Receipts: bob and dave have the chat open, so alice's message is read by 2 of 2.
      await sendAndWait(a, 'see you saturday');
      await a.locator('#receipt summary', { hasText: 'Read by 2 of 2' }).waitFor({ timeout: 20_000 });
      await a.locator('#receipt summary').click();
      await a.locator('#receipt .receipt-list', { hasText: 'bob' }).waitFor();
      if (mode === 'write') await shot(b, '08-group-chat');

      // dave leaves; the others see it.
      await d.getByRole('button', { name: 'Group settings' }).click();
      await d.locator('#leave-group').click();
      await d.locator('#leave-group', { hasText: 'Really leave?' }).click();
      await convRow(d, 'Weekend plans').waitFor({ state: 'detached' });
      await expectTexts(b, [...forBob, 'see you saturday', 'dave left the group']);
      await b.locator('#chat-sub', { hasText: '2 members' }).waitFor();

      for (const p of Object.values(people)) {
        assert.deepEqual(unexpectedErrors(p.page, LOST_ACCESS), []);
        await p.context.close();
      }
    });
  });
}

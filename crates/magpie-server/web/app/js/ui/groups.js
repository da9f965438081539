// Group dialogs: create a group (name, friends to add, anyone else by username), and manage
// one (rename, add and remove members, leave). Native <dialog> elements: focus stays inside
// while open, Escape closes, and focus returns to the button that opened them.

import { describeError } from '../api.js';
import { avatar, h } from './dom.js';
import { toast } from './toast.js';

/** Opens a modal dialog built by `build(close)`; returns the dialog. */
function modal(titleText, build) {
  const opener = document.activeElement;
  const dlg = h('dialog', { class: 'dialog', attrs: { 'aria-labelledby': 'dialog-title' } });
  const close = () => dlg.close();
  dlg.addEventListener('close', () => {
    dlg.remove();
    if (opener?.isConnected) opener.focus();
  });
  const closeBtn = h('button', { class: 'btn-icon', type: 'button', text: '×', attrs: { 'aria-label': 'Close' } });
  closeBtn.addEventListener('click', close);
  dlg.append(h('header', { class: 'dialog-header' }, h('h2', { id: 'dialog-title', text: titleText }), closeBtn), build(close));
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

/** Resolves comma- or space-separated usernames to user ids (throws on an unknown one). */
async function resolveNames(client, text) {
  const names = text.split(/[\s,]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
  const ids = [];
  for (const n of names) {
    try {
      const u = await client.api.userByName(n);
      client.users.set(u.user_id, u.username);
      ids.push(u.user_id);
    } catch (e) {
      if (e.code === 'not_found') throw new Error(`No user called “${n}”.`);
      throw e;
    }
  }
  return ids;
}

function errorText(e) {
  return e instanceof Error && !e.code ? e.message : describeError(e);
}

export function openCreateGroup(app) {
  const { client } = app;
  modal('New group', (close) => {
    const name = h('input', { id: 'group-name', type: 'text', required: true, attrs: { maxlength: 128 } });
    const others = h('input', {
      id: 'group-usernames', type: 'text', autocomplete: 'off', autocapitalize: 'none', spellcheck: false,
      placeholder: 'e.g. carol, dave', attrs: { 'aria-describedby': 'group-usernames-hint' },
    });
    const error = h('p', { class: 'form-error', attrs: { role: 'alert' } });
    const friends = [...client.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
    const boxes = friends.map((f) =>
      h('li', {}, h('label', { class: 'check' },
        h('input', { type: 'checkbox', value: f.user_id, name: 'member' }),
        avatar(f.username), h('span', { text: f.username }))),
    );
    const submit = h('button', { class: 'btn btn-primary', type: 'submit', text: 'Create group' });
    const form = h('form', { class: 'dialog-body' },
      h('div', { class: 'field' }, h('label', { htmlFor: 'group-name', text: 'Group name' }), name),
      h('fieldset', { class: 'field' },
        h('legend', { text: 'Friends to add' }),
        boxes.length ? h('ul', { class: 'check-list' }, boxes) : h('p', { class: 'muted', text: 'No friends yet.' }),
      ),
      h('div', { class: 'field' },
        h('label', { htmlFor: 'group-usernames', text: 'Others, by username' }), others,
        h('small', { class: 'hint', id: 'group-usernames-hint', text: 'Separate names with commas.' }),
      ),
      error,
      h('div', { class: 'dialog-actions' }, submit),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      if (!name.value.trim()) {
        error.textContent = 'Give the group a name.';
        name.focus();
        return;
      }
      submit.disabled = true;
      try {
        const picked = [...form.querySelectorAll('input[name=member]:checked')].map((b) => b.value);
        const extra = await resolveNames(client, others.value);
        const id = await client.createGroup(name.value.trim(), [...new Set([...picked, ...extra])]);
        close();
        await app.openConversation(id);
      } catch (e) {
        error.textContent = errorText(e);
        submit.disabled = false;
      }
    });
    setTimeout(() => name.focus(), 0);
    return form;
  });
}

export function openGroupSettings(app, id) {
  const { client } = app;
  const body = h('div', { class: 'dialog-body', attrs: { 'aria-live': 'polite' } }, h('p', { class: 'muted', text: 'Loading…' }));
  const dlg = modal('Group', () => body);
  let leaveArmed = false;
  // Loads overlap (an action's refresh, system messages, user names); only the newest may
  // render, or a slow answer from before a rename would put the old name back.
  let loads = 0;

  async function load() {
    const n = ++loads;
    let details;
    try {
      details = await client.groupDetails(id);
    } catch (e) {
      if (n !== loads) return;
      body.replaceChildren(h('p', { class: 'form-error', text: describeError(e) }));
      return;
    }
    if (!dlg.open || n !== loads) return;
    const { info, members, more } = details;
    dlg.querySelector('#dialog-title').textContent = info.name;
    const mine = members.find((m) => m.user_id === client.me);
    const owner = info.owner_id === client.me;
    const admin = owner || mine?.role === 'admin';
    const error = h('p', { class: 'form-error', attrs: { role: 'alert' } });
    const parts = [];

    if (admin) {
      const nameInput = h('input', { id: 'rename-input', type: 'text', value: info.name, required: true, attrs: { maxlength: 128 } });
      const renameForm = h('form', { class: 'field' },
        h('label', { htmlFor: 'rename-input', text: 'Group name' }),
        h('div', { class: 'row' }, nameInput, h('button', { class: 'btn btn-secondary', type: 'submit', text: 'Rename' })),
      );
      renameForm.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const n = nameInput.value.trim();
        if (n && n !== info.name) act(() => client.renameGroup(id, n), `Renamed to “${n}”.`);
      });
      parts.push(renameForm);
    }

    parts.push(h('p', { class: 'muted', text: `${info.member_count} members${info.fanout === 'read' ? ' · large group (no typing or live receipts)' : ''}` }));
    const rows = members.map((m) => {
      const name = client.users.label(m.user_id);
      const role = m.user_id === info.owner_id ? 'owner' : m.role;
      const canRemove = m.user_id !== client.me && m.user_id !== info.owner_id && (owner || (admin && m.role === 'member'));
      const li = h('li', { class: 'person', dataset: { userId: m.user_id } },
        avatar(name), h('span', { class: 'person-name' }, h('span', { text: m.user_id === client.me ? `${name} (you)` : name }), role !== 'member' ? h('small', { class: 'muted', text: role }) : null));
      if (canRemove) {
        const rm = h('button', { class: 'btn btn-ghost', type: 'button', text: 'Remove', attrs: { 'aria-label': `Remove ${name} from the group` } });
        rm.addEventListener('click', () => act(() => client.removeMember(id, m.user_id), `${name} was removed.`));
        li.append(rm);
      }
      return li;
    });
    parts.push(h('ul', { class: 'people-list', id: 'member-list', attrs: { 'aria-label': 'Members' } }, rows));
    if (more) parts.push(h('p', { class: 'muted', text: 'Only the first 1,000 members are listed.' }));

    if (admin) {
      const addInput = h('input', {
        id: 'add-members-input', type: 'text', autocomplete: 'off', autocapitalize: 'none', spellcheck: false,
        placeholder: 'usernames, comma separated', attrs: { list: 'add-members-friends' },
      });
      const datalist = h('datalist', { id: 'add-members-friends' },
        [...client.friends.values()].map((f) => h('option', { value: f.username })));
      const addForm = h('form', { class: 'field' },
        h('label', { htmlFor: 'add-members-input', text: 'Add members' }),
        h('div', { class: 'row' }, addInput, datalist, h('button', { class: 'btn btn-secondary', type: 'submit', text: 'Add' })),
      );
      addForm.addEventListener('submit', (ev) => {
        ev.preventDefault();
        act(async () => {
          const ids = await resolveNames(client, addInput.value);
          if (ids.length) await client.addMembers(id, ids);
        }, 'Members added.');
      });
      parts.push(addForm);
    }

    const leave = h('button', { class: 'btn btn-danger', type: 'button', id: 'leave-group', text: leaveArmed ? 'Really leave?' : 'Leave group' });
    leave.addEventListener('click', async () => {
      if (!leaveArmed) {
        leaveArmed = true;
        leave.textContent = 'Really leave? Click again';
        return;
      }
      leave.disabled = true;
      try {
        await client.leaveGroup(id);
        dlg.close();
        app.showList();
        toast(`You left ${info.name}.`);
      } catch (e) {
        leave.disabled = false;
        error.textContent = describeError(e);
      }
    });
    parts.push(error, h('div', { class: 'dialog-actions' }, leave));

    const focusedId = document.activeElement?.id;
    body.replaceChildren(...parts);
    if (focusedId) body.querySelector(`#${CSS.escape(focusedId)}`)?.focus();

    async function act(fn, done) {
      error.textContent = '';
      try {
        await fn();
        toast(done);
        load();
      } catch (e) {
        error.textContent = errorText(e);
      }
    }
  }

  // Re-read when the group changes (system messages) while the dialog is open.
  const off = client.events.on(`group:${id}`, () => dlg.open && load());
  const offUsers = client.events.on('users', () => dlg.open && load());
  dlg.addEventListener('close', () => {
    off();
    offUsers();
  });
  load();
}

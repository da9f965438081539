// The sign-in screen: log in, or create an account (and log in with it). Each login is a
// new device with its own token and cursor.

import { createApi, describeError } from '../api.js';
import { deviceName, saveSession } from '../session.js';
import { h } from './dom.js';

const USERNAME_RE = /^[a-z0-9_]{3,32}$/;

/**
 * Renders the screen into `root`. `onLoggedIn(session)` runs after a successful login;
 * `notice` is shown above the form (e.g. "You were logged out").
 */
export function renderAuth(root, { onLoggedIn, notice = '' }) {
  const api = createApi();
  let mode = 'login';

  const title = h('h1', { id: 'auth-title', text: 'Log in to Magpie' });
  const user = h('input', {
    id: 'auth-username',
    name: 'username',
    type: 'text',
    required: true,
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: false,
    attrs: { minlength: 3, maxlength: 32, 'aria-describedby': 'auth-username-hint' },
  });
  const pass = h('input', {
    id: 'auth-password',
    name: 'password',
    type: 'password',
    required: true,
    autocomplete: 'current-password',
    attrs: { minlength: 8, maxlength: 1024 },
  });
  const error = h('p', { class: 'form-error', id: 'auth-error', attrs: { role: 'alert' } });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit', text: 'Log in' });
  const switcher = h('button', { class: 'btn-link', type: 'button', text: 'Create an account' });
  const switchText = h('span', { text: 'New here? ' });

  const form = h(
    'form',
    { class: 'auth-form', attrs: { 'aria-labelledby': 'auth-title', novalidate: true } },
    title,
    notice ? h('p', { class: 'auth-notice', attrs: { role: 'status' }, text: notice }) : null,
    h('div', { class: 'field' },
      h('label', { htmlFor: 'auth-username', text: 'Username' }),
      user,
      h('small', { id: 'auth-username-hint', class: 'hint', text: '3–32 characters: a–z, 0–9 and _' }),
    ),
    h('div', { class: 'field' }, h('label', { htmlFor: 'auth-password', text: 'Password' }), pass),
    error,
    submit,
    h('p', { class: 'auth-switch' }, switchText, switcher),
  );

  function setMode(m) {
    mode = m;
    const reg = m === 'register';
    title.textContent = reg ? 'Create your Magpie account' : 'Log in to Magpie';
    submit.textContent = reg ? 'Create account' : 'Log in';
    switchText.textContent = reg ? 'Already have an account? ' : 'New here? ';
    switcher.textContent = reg ? 'Log in' : 'Create an account';
    pass.autocomplete = reg ? 'new-password' : 'current-password';
    error.textContent = '';
    user.focus();
  }
  switcher.addEventListener('click', () => setMode(mode === 'login' ? 'register' : 'login'));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const username = user.value.trim().toLowerCase();
    const password = pass.value;
    if (!USERNAME_RE.test(username)) {
      error.textContent = 'Usernames have 3–32 characters: lowercase letters, digits and _.';
      user.focus();
      return;
    }
    if (password.length < 8) {
      error.textContent = 'Passwords have at least 8 characters.';
      pass.focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute('aria-busy', 'true');
    try {
      if (mode === 'register') await api.register(username, password);
      const s = await api.login(username, password, deviceName());
      const session = { token: s.token, user_id: s.user_id, device_id: s.device_id, username };
      saveSession(session);
      onLoggedIn(session);
    } catch (e) {
      error.textContent = describeError(e);
      submit.disabled = false;
      form.removeAttribute('aria-busy');
    }
  });

  root.replaceChildren(
    h('main', { class: 'auth' },
      h('div', { class: 'auth-card' },
        h('div', { class: 'brand' }, h('img', { src: '/app/icon.svg', alt: '', width: 40, height: 40 }), h('span', { text: 'Magpie' })),
        form,
      ),
    ),
  );
  user.focus();
}

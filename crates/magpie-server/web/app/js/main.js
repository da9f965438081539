// Entry point: shows the sign-in screen or, with a session in this tab, starts the client
// core and renders the app.

import { Client } from './client.js';
import { clearSession, loadSession } from './session.js';
import { renderAuth } from './ui/auth.js';
import { renderShell } from './ui/shell.js';
import { toast } from './ui/toast.js';

const root = document.getElementById('app');
let client = null;

function showAuth(notice = '') {
  root.removeAttribute('aria-busy');
  document.title = 'Magpie';
  renderAuth(root, { onLoggedIn: start, notice });
}

function start(session) {
  client = new Client(session, {
    notify: toast,
    onRevoked: () => {
      clearSession();
      client = null;
      showAuth('Your session ended. Please log in again.');
    },
  });
  renderShell(root, client, {
    onLogout: () => {
      clearSession();
      client = null;
      showAuth('You are logged out.');
    },
  });
  root.removeAttribute('aria-busy');
  // The tab title counts unread conversations.
  client.events.on('conversations', () => {
    if (!client) return;
    const n = [...client.conversations.values()].filter((c) => c.unread_count > 0 && !c.muted).length;
    document.title = n ? `(${n}) Magpie` : 'Magpie';
  });
  client.start();
}

const saved = loadSession();
if (saved) start(saved);
else showAuth();

// Flush the cursor when the tab goes away.
window.addEventListener('pagehide', () => client?.flushAck());

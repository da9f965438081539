// Toasts: short notices in the corner. Errors are announced assertively (role=alert), other
// notices politely. Each disappears after a while or when dismissed.

import { h } from './dom.js';

let host = null;

function container() {
  if (!host) {
    host = h('div', { class: 'toasts' });
    document.body.append(host);
  }
  return host;
}

/** Shows `text`; `kind` is 'error' or 'info'. */
export function toast(text, kind = 'info') {
  const close = h('button', {
    class: 'toast-close',
    type: 'button',
    text: '×',
    attrs: { 'aria-label': 'Dismiss notification' },
  });
  const el = h(
    'div',
    { class: `toast toast-${kind}`, attrs: { role: kind === 'error' ? 'alert' : 'status' } },
    h('span', { class: 'toast-text', text }),
    close,
  );
  const remove = () => el.remove();
  close.addEventListener('click', remove);
  container().append(el);
  while (container().children.length > 4) container().firstElementChild.remove();
  setTimeout(remove, kind === 'error' ? 8000 : 5000);
}

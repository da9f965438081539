// DOM helpers. User text only ever goes through `textContent` (never innerHTML), so names
// and messages cannot inject markup.

/**
 * Creates an element. `props`: `class`, `text`, `on: {event: fn}`, `dataset: {...}`,
 * `attrs: {...}` (setAttribute), and any other key is assigned as a property (id, type,
 * hidden, disabled, value, htmlFor, ...). Children are nodes, strings or falsy (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'attrs') for (const [a, av] of Object.entries(v)) {
      if (av !== undefined && av !== null && av !== false) el.setAttribute(a, av === true ? '' : String(av));
    }
    else el[k] = v;
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false || c === '') continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Sets or removes an attribute. */
export function attr(el, name, value) {
  if (value === null || value === undefined || value === false) el.removeAttribute(name);
  else el.setAttribute(name, value === true ? '' : String(value));
}

/** "14:05" today, "Mon 14:05" this week, else "3 Nov". */
export function formatTime(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  const n = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === n.toDateString()) return hm;
  if (n - d < 6 * 86_400_000) return `${d.toLocaleDateString([], { weekday: 'short' })} ${hm}`;
  return d.toLocaleDateString([], { day: 'numeric', month: 'short' });
}

/** A full timestamp for tooltips. */
export function formatFull(ts) {
  return ts ? new Date(ts).toLocaleString() : '';
}

/** An avatar circle with the first letter of `name`, coloured by the name. */
export function avatar(name, extraClass = '') {
  let hash = 0;
  for (const ch of name || '?') hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const el = h('span', { class: `avatar ${extraClass}`.trim(), attrs: { 'aria-hidden': 'true' } });
  el.textContent = (name || '?').slice(0, 1).toUpperCase();
  el.dataset.hue = String(hash % 8);
  return el;
}

/** A visually hidden label text (read by screen readers). */
export function srOnly(text) {
  return h('span', { class: 'sr-only', text });
}

/**
 * Keyed list rendering: makes `container`'s children the elements of `items` in order,
 * reusing the element of a key whose `sig` (a string of everything it shows) is unchanged,
 * so unchanged rows keep focus and pending clicks. `cache` (a Map) persists between calls.
 * Each item: `{key, sig, build: () => Element}`.
 */
export function reconcile(container, items, cache) {
  const keep = new Set();
  let next = container.firstChild;
  for (const it of items) {
    keep.add(it.key);
    let entry = cache.get(it.key);
    if (!entry || entry.sig !== it.sig) {
      const el = it.build();
      if (entry) {
        const hadFocus = entry.el.contains(document.activeElement);
        const focusSel = hadFocus && document.activeElement.dataset?.focusKey;
        entry.el.replaceWith(el);
        if (hadFocus) (focusSel ? el.querySelector(`[data-focus-key="${focusSel}"]`) : el.querySelector('button, [tabindex]'))?.focus?.();
        if (next === entry.el) next = el;
      }
      entry = { el, sig: it.sig };
      cache.set(it.key, entry);
    }
    if (entry.el !== next) container.insertBefore(entry.el, next);
    else next = next.nextSibling;
  }
  for (const [key, entry] of cache) {
    if (!keep.has(key)) {
      entry.el.remove();
      cache.delete(key);
    }
  }
}

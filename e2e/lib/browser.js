// Debian's Chromium driven by playwright-core (Playwright cannot download its own browser
// here). Each `launch()` gets a fresh, empty profile; a browser context is one "person"
// (its own storage); pages in one context are tabs (sessionStorage is per tab).

import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SCREENSHOTS = join(REPO, 'artifacts', 'screenshots');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export async function launch() {
  await mkdir(SCREENSHOTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

/**
 * A new person: a browser context whose localStorage carries client config overrides
 * (`config`, see web/app/js/config.js), and its first tab at the server's root.
 */
export async function person(browser, server, { config = {}, viewport = { width: 1180, height: 760 } } = {}) {
  const context = await browser.newContext({ viewport, locale: 'en-GB', timezoneId: 'UTC' });
  await context.addInitScript((cfg) => {
    localStorage.setItem('magpie.config', JSON.stringify(cfg));
  }, { backoffCapMs: 1500, ...config });
  const page = await tab(context, server);
  return { context, page };
}

/** Opens another tab of the same person (a second device once it logs in). */
export async function tab(context, server) {
  const page = await context.newPage();
  // Uncaught exceptions, and console errors (CSP violations, failed requests, ...): tests
  // assert both stay empty, apart from connection failures while a server is down.
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(15_000);
  await page.goto(server.url);
  return page;
}

/** Saves a screenshot under artifacts/screenshots/. */
export async function shot(page, name) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

/** The page's errors, minus those matching `allowed` (a RegExp). */
export function unexpectedErrors(page, allowed) {
  return page.errors.filter((e) => !allowed.test(String(e)));
}

/** While a server is down: requests cut by the shutdown (refused, reset, empty, or a 503). */
export const CONNECTION_FAILURES = /WebSocket connection to|Failed to load resource/;
/** A member removed from a group may have a request in flight that now answers 403. */
export const LOST_ACCESS = /Failed to load resource: the server responded with a status of 403/;

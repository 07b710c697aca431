/**
 * What both end-to-end scripts share: arguments, logging, Chromium, a user in a browser context
 * of its own, registration through the UI.
 */
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { chromium } from 'playwright-core';

export const TIMEOUT = 15000;

/** `--name value` pairs, and the common ones resolved: url, out (created), executablePath. */
export function parseArgs(argv = process.argv.slice(2)) {
  const args = Object.fromEntries(
    argv.reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), [])
  );
  const url = args.url || 'http://127.0.0.1:8080/';
  const out = resolve(args.out || 'e2e-artifacts');
  mkdirSync(out, { recursive: true });
  return { args, url, origin: new URL(url).origin, out, executablePath: args.chromium || process.env.CHROMIUM || '/usr/bin/chromium' };
}

export function logger(prefix = '') {
  const started = Date.now();
  return (...a) => console.log(`[${prefix}${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
}

export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Headless Debian Chromium; without the background-networking flags its connections to Google
 * are refused by this closed network at every start. Playwright gives each launch a fresh
 * user-data dir of its own (and removes it). */
export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A browser context of its own (`prepare(context)` runs before the page opens), on `url`. */
export async function newUser(browser, url, name, prepare = null) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  if (prepare) await prepare(context);
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e.message));
  page.on('console', (m) => m.type() === 'error' && console.error(`[${name}] console:`, m.text()));
  await page.goto(url);
  return { name, context, page };
}

/** Register through the form and wait until the app is online (`beforeSubmit(page)` e.g. takes a screenshot). */
export async function register(u, username, displayName, beforeSubmit = null) {
  const { page } = u;
  await page.getByTestId('username').fill(username);
  await page.getByTestId('password').fill('correct horse battery');
  await page.getByTestId('display-name').fill(displayName);
  if (beforeSubmit) await beforeSubmit(page);
  await page.getByTestId('register').click();
  await page.getByTestId('me').filter({ hasText: displayName }).waitFor();
  await page.getByTestId('connection').filter({ hasText: 'online' }).waitFor();
}

export async function waitFor(what, fn, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

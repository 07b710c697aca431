#!/usr/bin/env node
/**
 * End-to-end test of the Web Push opt-in, against a node with Web Push configured and a Web Push
 * stand-in (tests/support/push_standins.py) that the Python test runs and checks:
 *
 *   node e2e/push.mjs --url http://127.0.0.1:8080/ --subscription '<PushSubscription JSON>' --vapid <key>
 *                     [--out dir] [--chromium /usr/bin/chromium]
 *
 * Headless Chromium reaches no real push service, so `PushManager.prototype.subscribe` is replaced
 * (context.addInitScript) by one that answers the given subscription: the stand-in's endpoint and
 * a real P-256 key pair + auth secret made by the test (the stand-in keeps the private half and
 * decrypts what the node sends). Everything else is real: the service worker, the permission
 * (granted to the origin), the app's opt-in, `push.config` / `push.register` on the node.
 *
 * Alice opts in (the worker is registered with scope /, subscribe gets the server's VAPID key) and
 * closes the page; Bob writes to her. A push is delivered to Alice's service worker (DevTools
 * protocol) and its notification is checked (title, body, tag = the chat). Alice logs out and in
 * again (a new device): the app registers the subscription again; she closes the page, Bob writes.
 * Then she opts out, closes the page, Bob writes a third time. Each `RESULT {...}` line is a push
 * the Python test expects at the stand-in, `NOT_PUSHED {...}` one it must not get. Exit 0 = pass.
 */
import { join } from 'node:path';
import { TIMEOUT, assert, launch, logger, newUser as openUser, parseArgs, register, waitFor } from './common.mjs';

const { args, url, origin, out, executablePath } = parseArgs();
const subscription = JSON.parse(args.subscription);
const vapid = args.vapid;
const log = logger('push ');
const started = Date.now();

/** In the page, before the app: PushManager answers the test's subscription (no push service here). */
function fakePushManager(sub) {
  let current = null;
  const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  window.e2ePush = { subscribeCalls: [] };
  PushManager.prototype.subscribe = async function (options) {
    const key = options.applicationServerKey;
    window.e2ePush.subscribeCalls.push({
      userVisibleOnly: options.userVisibleOnly,
      applicationServerKey: typeof key === 'string' ? key : b64url(key),
    });
    const s = {
      endpoint: sub.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: new Uint8Array(key).buffer },
      toJSON: () => ({ endpoint: sub.endpoint, expirationTime: null, keys: { ...sub.keys } }),
      unsubscribe: async () => ((current = null), true),
    };
    current = s;
    return s;
  };
  PushManager.prototype.getSubscription = async function () {
    return current;
  };
}

const newUser = (browser, name, { push = false } = {}) =>
  openUser(browser, url, name, push
    ? async (context) => {
        await context.grantPermissions(['notifications'], { origin });
        await context.addInitScript(fakePushManager, subscription);
      }
    : null);

async function main() {
  const browser = await launch(executablePath);
  try {
    const tag = Math.random().toString(36).slice(2, 8);
    const a = await newUser(browser, 'alice', { push: true });
    const b = await newUser(browser, 'bob');
    await register(a, `pa_${tag}`, 'Alice');
    await register(b, `pb_${tag}`, 'Bob');

    // a direct chat, made by Bob
    await b.page.getByTestId('search').fill(`pa_${tag}`);
    await b.page.getByTestId(`chat-with-pa_${tag}`).click();
    await b.page.getByTestId('chat-title').filter({ hasText: 'Alice' }).waitFor();
    const chatId = await b.page.evaluate(() => window.messenger.store.openChatId);
    await a.page.getByTestId('chat-item').filter({ hasText: 'Bob' }).waitFor();

    // Alice opts in: the toggle shows (the browser can, push.config lists webpush); Bob's does
    // too, but he does not use it
    const toggle = a.page.getByTestId('push-toggle');
    await toggle.filter({ hasText: 'Get notifications' }).waitFor();
    await toggle.click();
    await a.page.locator('[data-testid=push-toggle][data-on=true]').filter({ hasText: 'Turn off' }).waitFor();
    assert((await a.page.getByTestId('push-error').count()) === 0, 'no push error');
    const state = await a.page.evaluate(async () => {
      const reg = await navigator.serviceWorker.getRegistration();
      return {
        calls: window.e2ePush.subscribeCalls,
        scope: reg?.scope,
        script: (reg?.active || reg?.waiting || reg?.installing)?.scriptURL,
        permission: Notification.permission,
      };
    });
    assert(state.scope === `${origin}/`, `service worker scope is / (${state.scope})`);
    assert(state.script === `${origin}/sw.js`, `service worker script /sw.js (${state.script})`);
    assert(state.permission === 'granted', `notification permission ${state.permission}`);
    assert(state.calls.length === 1 && state.calls[0].userVisibleOnly === true, `one subscribe ${JSON.stringify(state.calls)}`);
    assert(state.calls[0].applicationServerKey === vapid, `subscribed with the server's VAPID key: ${state.calls[0].applicationServerKey}`);
    await a.page.screenshot({ path: join(out, 'push-on.png') });
    log('alice opted in: service worker at scope /, subscribed with the VAPID key, registered');

    // Alice closes the page (no session left; her context keeps the service worker); Bob writes
    await b.page.getByTestId('chat-status').filter({ hasText: 'online' }).waitFor();
    await a.page.close();
    await b.page.getByTestId('chat-status').filter({ hasText: /last seen|offline/ }).waitFor();
    const text = `Ping while you are away ${tag}`;
    await b.page.getByTestId('composer').fill(text);
    await b.page.getByTestId('send').click();
    await b.page.getByTestId('message-text').filter({ hasText: text }).waitFor();
    console.log(`RESULT ${JSON.stringify({ chat_id: chatId, title: 'Bob', body: text })}`);
    log('alice offline, bob wrote: the stand-in should get her push');

    // the service worker shows a push (delivered through the DevTools protocol, as the push
    // service would): one notification, tagged with the chat. A page of the origin that is not
    // the app (so Alice does not come online) looks at the worker's notifications.
    const probe = await a.context.newPage();
    await probe.goto(`${origin}/healthz`);
    const cdp = await a.context.newCDPSession(probe);
    const registrationId = new Promise((res) =>
      cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
        const r = registrations.find((x) => x.scopeURL === `${origin}/` && !x.isDeleted);
        if (r) res(r.registrationId);
      })
    );
    await cdp.send('ServiceWorker.enable');
    const payload = { title: 'Bob', body: text, tag: chatId, type: 'message.new', chat_id: chatId, message_id: 'm', seq: 1, sender_id: 'u' };
    await cdp.send('ServiceWorker.deliverPushMessage', { origin, registrationId: await registrationId, data: JSON.stringify(payload) });
    const shown = await probe.evaluate(async (tag) => {
      const reg = await navigator.serviceWorker.getRegistration('/');
      for (let i = 0; i < 50; i++) {
        const list = await reg.getNotifications({ tag });
        if (list.length) return list.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
        await new Promise((r) => setTimeout(r, 100));
      }
      return [];
    }, chatId);
    assert(shown.length === 1, `one notification shown: ${JSON.stringify(shown)}`);
    assert(shown[0].title === 'Bob' && shown[0].body === text && shown[0].tag === chatId, `notification ${JSON.stringify(shown[0])}`);
    assert(shown[0].data.url === `/#/chat/${chatId}`, `notification opens the chat: ${shown[0].data.url}`);
    log('the service worker showed the push as a notification tagged with the chat');
    await probe.close();

    // a new login is a new device (logging out dropped the device's tokens on the server): the app
    // registers the browser's subscription again for it, since Alice opted in here
    a.page = await a.context.newPage();
    a.page.setDefaultTimeout(TIMEOUT);
    await a.page.goto(url);
    await a.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor();
    await a.page.getByTestId('logout').click();
    await a.page.getByTestId('login').waitFor();
    await a.page.evaluate(() => (window.messenger.pushResumed = null));
    await a.page.getByTestId('username').fill(`pa_${tag}`);
    await a.page.getByTestId('password').fill('correct horse battery');
    await a.page.getByTestId('login').click();
    await a.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor();
    await a.page.waitForFunction(() => window.messenger.pushResumed);
    assert((await a.page.evaluate(() => window.messenger.pushResumed)) === true, 'registered again after the login');
    await a.page.locator('[data-testid=push-toggle][data-on=true]').waitFor();
    await b.page.getByTestId('chat-status').filter({ hasText: 'online' }).waitFor();
    await a.page.close();
    await b.page.getByTestId('chat-status').filter({ hasText: /last seen|offline/ }).waitFor();
    const text2 = `Second ping after a new login ${tag}`;
    await b.page.getByTestId('composer').fill(text2);
    await b.page.getByTestId('send').click();
    await b.page.getByTestId('message-text').filter({ hasText: text2 }).waitFor();
    console.log(`RESULT ${JSON.stringify({ chat_id: chatId, title: 'Bob', body: text2 })}`);
    log('alice logged in again (a new device), re-registered, closed the page; bob wrote again');

    // Alice opts out: push.unregister; a later message is not pushed
    a.page = await a.context.newPage();
    a.page.setDefaultTimeout(TIMEOUT);
    await a.page.goto(url);
    await a.page.waitForFunction(() => window.messenger.pushResumed);
    await a.page.getByTestId('push-toggle').filter({ hasText: 'Turn off' }).click();
    await a.page.locator('[data-testid=push-toggle][data-on=false]').filter({ hasText: 'Get notifications' }).waitFor();
    await b.page.getByTestId('chat-status').filter({ hasText: 'online' }).waitFor();
    await a.page.close();
    await b.page.getByTestId('chat-status').filter({ hasText: /last seen|offline/ }).waitFor();
    const text3 = `Not pushed: alice opted out ${tag}`;
    await b.page.getByTestId('composer').fill(text3);
    await b.page.getByTestId('send').click();
    await b.page.getByTestId('message-text').filter({ hasText: text3 }).waitFor();
    console.log(`NOT_PUSHED ${JSON.stringify({ chat_id: chatId, body: text3 })}`);
    log('alice opted out and closed the page; bob wrote a third time');

    await a.context.close();
    await b.context.close();
    log(`PASS (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error('FAIL:', e?.stack || e);
  process.exit(1);
});

#!/usr/bin/env node
/**
 * End-to-end test of the web client against a running messenger node, with playwright-core
 * driving the system's Chromium (no browser download).
 *
 *   node e2e/run.mjs --url http://127.0.0.1:8080/ [--out ../var/test-artifacts/web] [--chromium /usr/bin/chromium]
 *                    [--metrics http://127.0.0.1:9100]   (the router's private port: also tests a drain)
 *
 * Two browser contexts, two users: register, a direct chat, messages with ticks, typing,
 * presence, an image, edit/react/delete, a group; then one goes offline (network cut), the other
 * writes, it comes back and shows everything in order. Screenshots go to --out. Exit code 0 = pass.
 */
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { assert, launch, logger, newUser as openUser, parseArgs, register as registerUser, waitFor } from './common.mjs';

const { args, url, out, executablePath } = parseArgs();
const log = logger();
const started = Date.now();

/** A small PNG (a gradient), made here so the test needs no files. */
function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) {
      row[1 + x * 3] = Math.round((x / width) * 255);
      row[2 + x * 3] = Math.round((y / height) * 255);
      row[3 + x * 3] = 180;
    }
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const newUser = (browser, name) => openUser(browser, url, name);
const register = (u, username, displayName, shot) =>
  registerUser(u, username, displayName, shot ? (page) => page.screenshot({ path: join(out, 'login.png') }) : null);

const texts = (page) => page.getByTestId('message-text').allTextContents();

async function main() {
  const browser = await launch(executablePath);
  try {
    const tag = Math.random().toString(36).slice(2, 8);
    const aName = `alice_${tag}`;
    const bName = `bob_${tag}`;
    const a = await newUser(browser, 'alice');
    const b = await newUser(browser, 'bob');
    await register(a, aName, 'Alice', true);
    await register(b, bName, 'Bob');
    log('registered and logged in', aName, bName);

    // Alice finds Bob and opens a direct chat
    await a.page.getByTestId('search').fill(bName.slice(0, 7));
    await a.page.getByTestId(`chat-with-${bName}`).click();
    await a.page.getByTestId('chat-title').filter({ hasText: 'Bob' }).waitFor();
    await a.page.getByTestId('chat-status').filter({ hasText: 'online' }).waitFor(); // presence
    log('direct chat open; Bob is online');

    // Alice writes; Bob sees the chat with an unread count and the last message
    for (const t of ['Hi Bob!', 'How are you?']) {
      await a.page.getByTestId('composer').fill(t);
      await a.page.getByTestId('send').click();
    }
    await waitFor('two messages on alice', async () => (await texts(a.page)).length === 2);
    const bChat = b.page.getByTestId('chat-item').filter({ hasText: 'Alice' });
    await bChat.getByTestId('unread').filter({ hasText: '2' }).waitFor();
    await bChat.filter({ hasText: 'How are you?' }).waitFor();
    await a.page.locator('[data-testid=ticks][data-ticks="2"]').first().waitFor(); // delivered
    await b.page.screenshot({ path: join(out, 'chat-list.png') });
    log('delivered: two ticks; bob sees unread 2');

    // Bob opens it: read ticks for Alice; Bob types, Alice sees it
    await bChat.click();
    await waitFor('messages on bob', async () => (await texts(b.page)).join('|') === 'Hi Bob!|How are you?');
    await waitFor('read ticks', async () => (await a.page.locator('[data-testid=ticks][data-ticks="3"]').count()) === 2);
    await b.page.getByTestId('composer').pressSequentially('Fine, tha');
    await a.page.getByTestId('chat-status').filter({ hasText: 'typing' }).waitFor();
    await a.page.screenshot({ path: join(out, 'typing.png') });
    await b.page.getByTestId('composer').pressSequentially('nks!');
    await b.page.getByTestId('send').click();
    await waitFor('bob reply on alice', async () => (await texts(a.page)).includes('Fine, thanks!'));
    log('read ticks, typing indicator, reply');

    // an image: create_upload -> PUT -> complete -> send with media_ids; both see the thumbnail
    await a.page.getByTestId('attach').setInputFiles({ name: 'gradient.png', mimeType: 'image/png', buffer: png(480, 320) });
    await b.page.getByTestId('thumb').waitFor();
    await a.page.getByTestId('thumb').waitFor();
    await waitFor('thumbnail loaded', () => b.page.getByTestId('thumb').evaluate((img) => img.complete && img.naturalWidth > 0));
    log('image sent, thumbnails shown');

    // edit and react on an own message; the other side sees both
    const first = a.page.getByTestId('message').filter({ hasText: 'Hi Bob!' });
    await first.hover();
    await first.getByTestId('edit').click();
    await a.page.getByTestId('edit-input').fill('Hi Bob! (edited)');
    await a.page.getByTestId('edit-input').press('Enter');
    await b.page.getByTestId('message').filter({ hasText: 'Hi Bob! (edited)' }).filter({ hasText: 'edited' }).waitFor();
    await first.hover();
    await first.getByRole('button', { name: '👍' }).click();
    await b.page.getByTestId('message').filter({ hasText: 'Hi Bob! (edited)' }).getByTestId('reaction').waitFor();
    await a.page.mouse.move(600, 600); // no hover toolbar in the picture
    await a.page.screenshot({ path: join(out, 'chat.png') });
    log('edit and reaction seen by bob');

    // Bob goes offline (network cut); Alice sees him go, writes three messages
    await b.page.evaluate(() => {
      window.e2eReady = [];
      window.messenger.client.on('ready', (r) => window.e2eReady.push(r));
    });
    await b.context.setOffline(true);
    await b.page.getByTestId('connection').filter({ hasText: /offline|connecting/ }).waitFor();
    log('bob offline (network cut)');
    const missed = ['while you were away 1', 'while you were away 2', 'while you were away 3'];
    for (const t of missed) {
      await a.page.getByTestId('composer').fill(t);
      await a.page.getByTestId('send').click();
    }
    await waitFor('alice sent all', async () => (await a.page.getByTestId('pending').count()) === 0 && (await texts(a.page)).includes(missed[2]));
    await waitFor('still offline', async () => !(await texts(b.page)).includes(missed[0]));
    // Bob writes while offline: shown at once, not sent; retried with the same client_msg_id
    await b.page.getByTestId('composer').fill('sent while offline');
    await b.page.getByTestId('send').click();
    await b.page.getByTestId('pending').filter({ hasText: 'sent while offline' }).getByTestId('retry').waitFor();
    await b.page.screenshot({ path: join(out, 'offline.png') });

    // back online: reconnect, sync, everything in order
    await b.context.setOffline(false);
    await b.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor();
    const expected = ['Hi Bob! (edited)', 'How are you?', 'Fine, thanks!', ...missed, 'sent while offline'];
    await waitFor('bob caught up in order', async () => (await texts(b.page)).join('|') === expected.join('|'));
    await waitFor('the offline message reached alice once', async () => (await texts(a.page)).join('|') === expected.join('|'));
    assert((await b.page.getByTestId('pending').count()) === 0, 'no pending message left');
    const ready = await b.page.evaluate(() => window.e2eReady);
    assert(ready.length === 1 && ready[0].reconnected === true, `one reconnect then sync, got ${JSON.stringify(ready)}`);
    await b.page.screenshot({ path: join(out, 'after-reconnect.png') });
    log('bob back online: all messages, in order');

    // Bob deletes his message; Alice sees the tombstone
    const mine = b.page.getByTestId('message').filter({ hasText: 'Fine, thanks!' });
    await mine.hover();
    await mine.getByTestId('delete').click();
    await a.page.getByTestId('message').filter({ hasText: 'message deleted' }).waitFor();
    log('delete seen');

    // token refresh against the server, then a page reload resumes with the stored tokens
    const tokenBefore = await b.page.evaluate(() => window.messenger.client.tokens.access_token);
    await b.page.evaluate(() => window.messenger.client.refresh());
    const tokenAfter = await b.page.evaluate(() => window.messenger.client.tokens.access_token);
    assert(tokenAfter && tokenAfter !== tokenBefore, 'refresh gave a new access token');
    await b.page.reload();
    await b.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor();
    await b.page.getByTestId('chat-item').filter({ hasText: 'Alice' }).click();
    await waitFor('history after reload', async () => (await texts(b.page)).at(-1) === 'sent while offline');
    // ticks for messages older than this page: from chat.get's receipts (Alice has read them all)
    await waitFor('read ticks after reload', async () => {
      const mine = b.page.getByTestId('message').filter({ hasText: 'sent while offline' });
      return (await mine.locator('[data-testid=ticks][data-ticks="3"]').count()) === 1;
    });
    log('token refreshed; page reload resumed the session with the new tokens');

    // a group with a third user
    const c = await newUser(browser, 'carol');
    const cName = `carol_${tag}`;
    await register(c, cName, 'Carol');
    await a.page.getByTestId('search').fill(`carol_${tag}`);
    await a.page.locator('.results li').filter({ hasText: cName }).locator('input[type=checkbox]').check();
    await a.page.getByTestId('search').fill(bName);
    await a.page.locator('.results li').filter({ hasText: bName }).locator('input[type=checkbox]').check();
    await a.page.getByTestId('group-title').fill('Weekend plans');
    await a.page.getByTestId('create-group').click();
    await a.page.getByTestId('chat-title').filter({ hasText: 'Weekend plans' }).waitFor();
    await a.page.getByTestId('composer').fill('Hello group');
    await a.page.getByTestId('send').click();
    for (const u of [b, c]) await u.page.getByTestId('chat-item').filter({ hasText: 'Weekend plans' }).filter({ hasText: 'Hello group' }).waitFor();
    log('group created, message seen by both members');

    // history with infinite scroll upward: 45 more messages (sent through the page's client), then
    // Bob opens the group (the newest page) and scrolls up until the start of the conversation
    await a.page.evaluate(async () => {
      const { client, store } = window.messenger;
      for (let i = 1; i <= 45; i++) {
        await client.call('messenger.message.send', { chat_id: store.openChatId, client_msg_id: `e2e-${Date.now()}-${i}`, text: `line ${i}` });
      }
    });
    await b.page.getByTestId('chat-item').filter({ hasText: 'Weekend plans' }).filter({ hasText: 'line 45' }).click();
    await waitFor('newest page', async () => (await texts(b.page)).at(-1) === 'line 45');
    const firstPage = (await texts(b.page)).length;
    assert(firstPage < 46, `only a page of history at first (${firstPage})`);
    for (let i = 0; i < 20 && !(await b.page.locator('.messages .start').count()); i++) {
      await b.page.getByTestId('messages').evaluate((el) => el.scrollTo(0, 0));
      await new Promise((r) => setTimeout(r, 150));
    }
    const all = await texts(b.page);
    assert(all.join('|') === ['Hello group', ...Array.from({ length: 45 }, (_, i) => `line ${i + 1}`)].join('|'), `history in order: ${all.slice(0, 3)}`);
    log(`infinite scroll: ${firstPage} messages first, ${all.length} after scrolling up`);

    // the shard drains (messenger.close.shard_draining): Alice reconnects at once, is turned away
    // again while it drains, backs off, and comes back when it serves again, missing nothing
    if (args.metrics) {
      const drain = (method, query = '') => fetch(`${args.metrics}/drain${query}`, { method }).then((r) => r.json());
      await drain('POST', '?grace=0&rate=100');
      await a.page.getByTestId('connection').filter({ hasText: /offline|connecting/ }).waitFor();
      await b.page.getByTestId('connection').filter({ hasText: /offline|connecting/ }).waitFor();
      await new Promise((r) => setTimeout(r, 1500));
      await drain('DELETE');
      await a.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor({ timeout: 20000 });
      await b.page.getByTestId('connection').filter({ hasText: 'online' }).waitFor({ timeout: 20000 });
      await b.page.getByTestId('composer').fill('after the drain');
      await b.page.getByTestId('send').click();
      await a.page.getByTestId('chat-item').filter({ hasText: 'Weekend plans' }).filter({ hasText: 'after the drain' }).waitFor();
      log('drain: both closed, reconnected when the shard served again');
    }

    // log out: back to the login screen
    await c.page.getByTestId('logout').click();
    await c.page.getByTestId('login').waitFor();
    log('logout');
    await c.context.close();

    // Bob closes his browser: Alice sees him go offline (last seen)
    await a.page.getByTestId('chat-item').filter({ hasText: 'Bob' }).click();
    await a.page.getByTestId('chat-status').filter({ hasText: 'online' }).waitFor();
    await b.context.close();
    await a.page.getByTestId('chat-status').filter({ hasText: 'last seen' }).waitFor();
    log('bob closed his browser; alice sees "last seen"');
    await a.context.close();
    log(`PASS (${((Date.now() - started) / 1000).toFixed(1)} s); screenshots in ${out}`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error('FAIL:', e?.stack || e);
  process.exit(1);
});

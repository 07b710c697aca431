import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MessengerClient, memoryStorage } from '../src/lib/client.js';
import { fakeServer } from './fake.js';

function makeClient(server, opts = {}) {
  return new MessengerClient({ url: 'ws://x/ws', connect: server.connect, random: () => 0.5, ...opts });
}

const flush = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

describe('MessengerClient', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
  });
  afterEach(() => vi.useRealTimers());

  it('logs in through a guest session, joins with the access token as ticket, subscribes to its topic', async () => {
    const server = fakeServer();
    server.add('chat.created');
    server.add('message.new');
    const c = makeClient(server);
    const states = [];
    c.on('state', (s) => states.push(s));
    await c.login({ username: 'alice', password: 'correct horse' });
    const [guest, user] = server.conns;
    expect(guest.authmethods).toEqual(['anonymous']);
    expect(guest.open).toBe(false);
    expect(user.authmethods).toEqual(['ticket']);
    expect(user.subs.map((x) => x.topic)).toEqual(['messenger.user.u1']);
    expect(c.stream.lastUpdateId).toBe(2); // a fresh start begins at the newest update
    expect(states).toEqual(['connecting', 'online']);
  });

  it('refreshes the token before it expires (80 % of its life), once, storing the new pair', async () => {
    const server = fakeServer({ expiresIn: 900 });
    const storage = memoryStorage();
    const c = makeClient(server, { storage });
    await c.login({ username: 'alice', password: 'pw' });
    expect(c.tokens.access_token).toBe('a1');
    await vi.advanceTimersByTimeAsync(719_000);
    expect(server.calls.filter(([p]) => p === 'messenger.auth.refresh')).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(2_000);
    const refreshes = server.calls.filter(([p]) => p === 'messenger.auth.refresh');
    expect(refreshes).toEqual([['messenger.auth.refresh', { refresh_token: 'r1' }]]);
    expect(c.tokens.access_token).toBe('a2');
    expect(storage.get('messenger.tokens').refresh_token).toBe('r2');
    // and again 12 minutes after that
    await vi.advanceTimersByTimeAsync(721_000);
    expect(c.tokens.access_token).toBe('a3');
  });

  it('concurrent refreshes share one call (a refresh token works once)', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    await c.login({ username: 'alice', password: 'pw' });
    const [a, b] = await Promise.all([c.refresh(), c.refresh()]);
    expect(a).toBe(b);
    expect(server.calls.filter(([p]) => p === 'messenger.auth.refresh')).toHaveLength(1);
  });

  it('two tabs sharing the stored tokens refresh once: the second adopts the pair the first stored', async () => {
    const server = fakeServer();
    const storage = memoryStorage();
    let held = Promise.resolve();
    const lock = (name, fn) => {
      const run = held.then(fn);
      held = run.catch(() => {});
      return run;
    };
    const tab1 = makeClient(server, { storage, lock });
    await tab1.login({ username: 'alice', password: 'pw' });
    const tab2 = makeClient(server, { storage, lock });
    await tab2.resume();
    await Promise.all([tab1.refresh(), tab2.refresh()]);
    expect(server.calls.filter(([p]) => p === 'messenger.auth.refresh')).toHaveLength(1);
    expect(tab2.tokens.refresh_token).toBe(tab1.tokens.refresh_token);
    expect(tab1.state).toBe('online');
    expect(tab2.state).toBe('online');
  });

  it('a logout in another tab (tokens removed) signs this tab out', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    await c.login({ username: 'alice', password: 'pw' });
    c.adoptTokens(null);
    expect(c.state).toBe('signed_out');
  });

  it('reconnects with backoff after a drop, then syncs what it missed, in order', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    const got = [];
    c.on('update', (u) => got.push(u.update_id));
    const ready = [];
    c.on('ready', (r) => ready.push(r));
    await c.login({ username: 'alice', password: 'pw' });
    server.userConn().publish(server.add('message.new'));
    expect(got).toEqual([1]);

    server.down = true;
    server.userConn().drop('lost');
    expect(c.state).toBe('offline');
    server.add('message.new'); // 2, 3 while offline
    server.add('message.new');
    await vi.advanceTimersByTimeAsync(750); // 1 s step with jitter 0.5 -> 750 ms: fails (down)
    expect(c.state).toBe('offline');
    expect(c.attempt).toBe(2);
    server.down = false;
    await vi.advanceTimersByTimeAsync(1499);
    expect(c.state).toBe('offline'); // second step: 2 s * 0.75 = 1500 ms
    await vi.advanceTimersByTimeAsync(1);
    await flush();
    expect(c.state).toBe('online');
    expect(got).toEqual([1, 2, 3]);
    expect(ready).toEqual([{ reconnected: false }, { reconnected: true }]);
    expect(c.attempt).toBe(0);
    const syncs = server.calls.filter(([p]) => p === 'messenger.sync.get_updates').map(([, kw]) => kw.since_update_id);
    expect(syncs.at(-1)).toBe(1);
  });

  it('networkLost drops the session at once; reconnectNow joins again and syncs', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    const got = [];
    c.on('update', (u) => got.push(u.update_id));
    await c.login({ username: 'alice', password: 'pw' });
    const before = server.userConn();
    server.down = true;
    c.networkLost();
    expect(before.open).toBe(false);
    expect(c.state).toBe('offline');
    server.add('message.new');
    server.down = false;
    c.reconnectNow();
    await flush();
    expect(c.state).toBe('online');
    expect(got).toEqual([1]);
  });

  it('a live event beyond the next id is a gap: it syncs and applies everything once', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    const got = [];
    c.on('update', (u) => got.push(u.update_id));
    await c.login({ username: 'alice', password: 'pw' });
    server.add('message.new');
    server.add('message.new');
    const third = server.add('message.new');
    server.userConn().publish(third); // 1 and 2 were never published
    await flush();
    expect(got).toEqual([1, 2, 3]);
  });

  it('refreshes an expired token before reconnecting', async () => {
    const server = fakeServer({ expiresIn: 900 });
    const c = makeClient(server);
    await c.login({ username: 'alice', password: 'pw' });
    server.down = true;
    server.userConn().drop('lost');
    await vi.advanceTimersByTimeAsync(16 * 60_000); // offline for longer than the token lives
    server.tickets.clear(); // the old access token is expired
    server.down = false;
    c.reconnectNow();
    await flush();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.state).toBe('online');
    const user = server.userConn();
    expect(server.tickets.has(c.tokens.access_token)).toBe(true);
    expect(user.subs).toHaveLength(1);
  });

  it('a session closed while joining (drain) is retried: at once, then with backoff, until it holds', async () => {
    const server = fakeServer();
    const c = makeClient(server, { random: () => 0.5, connect: (o) => server.connect(o) });
    await c.login({ username: 'alice', password: 'pw' });
    // the shard drains: every session is closed as it joins, the subscribe fails
    const connect = server.connect;
    let turnedAway = 0;
    server.connect = async (o) => {
      const conn = await connect(o);
      if (o.authmethods.includes('ticket') && server.draining) {
        turnedAway += 1;
        conn.subscribe = async () => {
          conn.drop('messenger.close.shard_draining');
          throw new Error('connection closed');
        };
      }
      return conn;
    };
    server.draining = true;
    server.userConn().drop('messenger.close.shard_draining');
    await vi.advanceTimersByTimeAsync(500); // at once (random 0.5 -> 500 ms)
    expect(turnedAway).toBe(1);
    expect(c.state).toBe('offline');
    await vi.advanceTimersByTimeAsync(750); // then backoff: 1 s step -> 750 ms
    expect(turnedAway).toBe(2);
    server.draining = false;
    await vi.advanceTimersByTimeAsync(1500); // 2 s step -> 1500 ms
    await flush();
    expect(c.state).toBe('online');
    expect(turnedAway).toBe(2);
  });

  it('a drain close reconnects at once (under 1 s), a second one backs off', () => {
    const c = makeClient(fakeServer(), { random: () => 0.9 });
    expect(c.nextDelay('messenger.close.shard_draining')).toBe(900);
    expect(c.nextDelay('messenger.close.shard_draining')).toBe(950); // backoff step 1 s, jittered
    expect(c.nextDelay('messenger.close.shard_draining')).toBe(1900);
  });

  it('a signed_out close ends the session: no reconnect, tokens forgotten', async () => {
    const server = fakeServer();
    const storage = memoryStorage();
    const c = makeClient(server, { storage });
    const out = [];
    c.on('signed_out', (r) => out.push(r.reason));
    await c.login({ username: 'alice', password: 'pw' });
    const n = server.conns.length;
    server.userConn().drop('messenger.close.signed_out');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(out).toEqual(['messenger.close.signed_out']);
    expect(c.state).toBe('signed_out');
    expect(storage.get('messenger.tokens')).toBe(null);
    expect(server.conns.length).toBe(n);
  });

  it('a refused refresh token signs out', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    await c.login({ username: 'alice', password: 'pw' });
    server.refreshTokens.clear();
    await expect(c.refresh()).rejects.toMatchObject({ code: 'messenger.error.unauthenticated' });
    expect(c.state).toBe('signed_out');
    expect(c.tokens).toBe(null);
  });

  it('logout calls the server, closes and forgets the tokens', async () => {
    const server = fakeServer();
    const c = makeClient(server);
    await c.login({ username: 'alice', password: 'pw' });
    const user = server.userConn();
    await c.logout();
    expect(server.calls.at(-1)[0]).toBe('messenger.auth.logout');
    expect(user.open).toBe(false);
    expect(c.tokens).toBe(null);
    await expect(c.call('messenger.user.me')).rejects.toMatchObject({ code: 'offline' });
  });

  it('resume() joins with stored tokens after a page reload', async () => {
    const server = fakeServer();
    const storage = memoryStorage();
    await makeClient(server, { storage }).login({ username: 'alice', password: 'pw' });
    const again = makeClient(server, { storage });
    expect(await again.resume()).toBe(true);
    expect(again.state).toBe('online');
    expect(await makeClient(server).resume()).toBe(false);
  });
});

/**
 * MessengerClient: the protocol of docs/PROTOCOL.md for browser apps (no UI in here).
 *
 * - auth: register, login (guest session), a user session joined with the access token as
 *   ticket, refresh before expiry (single flight; the new refresh token is stored before use),
 *   logout; a session closed with `messenger.close.signed_out` ends in the `signed_out` event;
 * - reconnect with backoff (at once, then backoff, after `messenger.close.shard_draining`),
 *   refreshing an expired token first, then `sync.get_updates` so nothing is missed;
 * - the event stream of `messenger.user.<id>` with gap detection (./stream.js).
 *
 * Events (`client.on(type, fn)`): `state` ('connecting' | 'online' | 'offline' | 'signed_out'),
 * `ready` ({reconnected}), `update` (durable event, in order, once), `typing`, `presence`,
 * `tokens`, `signed_out` ({reason}), `reset`.
 *
 * Everything time- and network-related is injected (connect, timers, now, random, storage), so
 * the logic is unit-tested with fakes.
 */
import { CLOSE, E, MessengerError } from './errors.js';
import { UpdateStream } from './stream.js';
import { backoffDelay, refreshDelayMs } from './timing.js';

export const P = {
  register: 'messenger.auth.register',
  login: 'messenger.auth.login',
  refresh: 'messenger.auth.refresh',
  logout: 'messenger.auth.logout',
  getUpdates: 'messenger.sync.get_updates',
};

const TOKENS_KEY = 'messenger.tokens';

export function memoryStorage() {
  const m = new Map();
  return { get: (k) => m.get(k) ?? null, set: (k, v) => m.set(k, v), remove: (k) => m.delete(k) };
}

export class MessengerClient {
  /**
   * @param {object} o
   * @param {string} o.url WebSocket URL, e.g. ws://127.0.0.1:8080/ws
   * @param {(o: {url: string, authmethods: string[], ticket?: string}) => Promise<any>} o.connect transport
   * @param {{get(k:string):any, set(k:string, v:any):void, remove(k:string):void}} [o.storage]
   */
  constructor({
    url,
    connect,
    storage = memoryStorage(),
    timers = { setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (t) => clearTimeout(t) },
    now = () => Date.now(),
    random = Math.random,
    deviceName = 'web',
    syncPageSize = 100,
    lock = (name, fn) => fn(),
  }) {
    this.url = url;
    this._connectTransport = connect;
    this.storage = storage;
    this.timers = timers;
    this.now = now;
    this.random = random;
    this.deviceName = deviceName;
    this.syncPageSize = syncPageSize;
    this.lock = lock; // cross-tab mutual exclusion (navigator.locks in a browser) for refreshes
    this.state = 'offline';
    this.conn = null;
    this.attempt = 0; // reconnect attempts since the last successful join
    this.drainCloses = 0;
    this._listeners = new Map();
    this._stopped = true;
    this._fresh = true;
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._refreshing = null;
    this._connecting = null;
    this.tokens = storage.get(TOKENS_KEY);
    this.stream = this._newStream();
  }

  // -- events -----------------------------------------------------------------------------------
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type).delete(fn);
  }

  _emit(type, payload) {
    for (const fn of this._listeners.get(type) || []) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`messenger: ${type} listener failed`, e);
      }
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._emit('state', state);
    }
  }

  get userId() {
    return this.tokens?.user_id ?? null;
  }

  _newStream() {
    return new UpdateStream({
      fetch: (since) => this.call(P.getUpdates, { since_update_id: since, limit: this.syncPageSize }),
      apply: (e) => this._emit('update', e),
      ephemeral: (e) => this._emit(e.type, e),
      onReset: (info) => this._emit('reset', info),
    });
  }

  // -- auth -------------------------------------------------------------------------------------
  async _guest(fn) {
    const conn = await this._connectTransport({ url: this.url, authmethods: ['anonymous'] });
    try {
      return await fn(conn);
    } finally {
      conn.close();
    }
  }

  register({ username, password, displayName }) {
    const kw = { username, password };
    if (displayName) kw.display_name = displayName;
    return this._guest((c) => c.call(P.register, kw));
  }

  async login({ username, password }) {
    const tokens = await this._guest((c) => c.call(P.login, { username, password, device_name: this.deviceName }));
    this._storeTokens(tokens);
    this.stream = this._newStream();
    this._fresh = true;
    await this.start();
    return tokens;
  }

  /** Start with stored tokens (a page reload); false when there are none. */
  async resume() {
    if (!this.tokens) return false;
    await this.start();
    return true;
  }

  _storeTokens(t) {
    this.tokens = { ...t, expires_at: this.now() + t.expires_in * 1000 };
    this.storage.set(TOKENS_KEY, this.tokens);
    this._emit('tokens', this.tokens);
  }

  accessExpired(marginMs = 5000) {
    return !this.tokens || this.now() + marginMs >= this.tokens.expires_at;
  }

  /** Refresh the tokens now (single flight). A refused refresh token signs out. */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  _refresh() {
    // Tabs of one browser share the stored tokens (one device): a refresh token works once, so
    // refreshes are serialized across tabs, and a tab that finds a newer pair stored adopts it.
    return this.lock('messenger.refresh', () => this._refreshLocked());
  }

  /** Tokens stored by another tab (the `storage` event), or null when it logged out. */
  adoptTokens(tokens) {
    if (!tokens) {
      if (this.tokens) this._signedOut('logged_out_elsewhere');
      return;
    }
    if (tokens.refresh_token === this.tokens?.refresh_token) return;
    if (this.tokens && tokens.user_id !== this.tokens.user_id) {
      this._signedOut('switched_user'); // another tab logged in as someone else
      return;
    }
    this.tokens = tokens;
    this._emit('tokens', tokens);
    this._scheduleRefresh();
  }

  async _refreshLocked() {
    if (!this.tokens) throw new MessengerError(E.unauthenticated, 'not logged in');
    const stored = this.storage.get(TOKENS_KEY);
    if (stored && stored.refresh_token !== this.tokens.refresh_token && stored.expires_at - this.now() > 60_000) {
      this.adoptTokens(stored); // another tab refreshed meanwhile
      return stored;
    }
    const kw = { refresh_token: this.tokens.refresh_token };
    let tokens;
    try {
      tokens = this.conn ? await this.conn.call(P.refresh, kw) : await this._guest((c) => c.call(P.refresh, kw));
    } catch (e) {
      if (e.code === E.unauthenticated) this._signedOut('refresh_refused');
      throw e;
    }
    this._storeTokens(tokens);
    this._scheduleRefresh();
    return tokens;
  }

  _scheduleRefresh() {
    if (this._refreshTimer) this.timers.clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.tokens || this._stopped) return;
    const leftS = Math.max(0, (this.tokens.expires_at - this.now()) / 1000);
    this._refreshTimer = this.timers.setTimeout(() => {
      this._refreshTimer = null;
      this.refresh().catch((e) => {
        if (this.tokens && !this._stopped) {
          // offline or unavailable: try again soon (the reconnect refreshes too)
          this._refreshTimer = this.timers.setTimeout(() => this._scheduleRefresh(), 5000);
          this._emit('error', e);
        }
      });
    }, refreshDelayMs(leftS));
  }

  async logout() {
    const conn = this.conn;
    this._stopped = true;
    try {
      if (conn) await conn.call(P.logout, {});
    } finally {
      this._clear();
      this._setState('signed_out');
      this._emit('signed_out', { reason: 'logout' });
    }
  }

  _signedOut(reason) {
    this._clear();
    this._setState('signed_out');
    this._emit('signed_out', { reason });
  }

  _clear() {
    this.stop();
    this.tokens = null;
    this.storage.remove(TOKENS_KEY);
  }

  // -- session ----------------------------------------------------------------------------------
  /** Join the user session (and keep it joined until stop/logout). */
  start() {
    this._stopped = false;
    return this._connect();
  }

  stop() {
    this._stopped = true;
    for (const t of [this._reconnectTimer, this._refreshTimer]) if (t) this.timers.clearTimeout(t);
    this._reconnectTimer = this._refreshTimer = null;
    const conn = this.conn;
    this.conn = null;
    if (conn) conn.close();
    if (this.state !== 'signed_out') this._setState('offline');
  }

  /**
   * The network is gone (the browser's `offline` event): drop the session now rather than wait
   * for the WebSocket pings to time out; reconnect with backoff (or `reconnectNow()` on `online`).
   */
  networkLost() {
    const conn = this.conn;
    if (!conn || this._stopped) return;
    this.conn = null;
    conn.close();
    this._setState('offline');
    this._emit('closed', { reason: 'network_lost' });
    this._scheduleReconnect('network_lost');
  }

  /** Reconnect now (e.g. the browser says it is online again). */
  reconnectNow() {
    if (this._stopped || this.conn || this._connecting) return;
    if (this._reconnectTimer) this.timers.clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this.attempt = 0;
    this._connect().catch(() => {});
  }

  _connect() {
    if (!this._connecting) {
      this._connecting = this._join().finally(() => {
        this._connecting = null;
      });
    }
    return this._connecting;
  }

  async _join() {
    this._setState('connecting');
    let conn;
    try {
      if (this.accessExpired()) await this.refresh();
      try {
        conn = await this._connectTransport({ url: this.url, authmethods: ['ticket'], ticket: this.tokens.access_token });
      } catch (e) {
        if (e.code !== E.unauthenticated) throw e;
        await this.refresh(); // e.g. the clock of this machine is off: try a fresh token once
        conn = await this._connectTransport({ url: this.url, authmethods: ['ticket'], ticket: this.tokens.access_token });
      }
      if (this._stopped) {
        conn.close();
        return;
      }
      this.conn = conn;
      conn.onClose((reason, message) => this._onClose(conn, reason, message));
      await conn.subscribe(`messenger.user.${this.userId}`, (event) => this.stream.push(event));
      if (this._fresh) await this.stream.startAtNewest();
      else await this.stream.sync();
    } catch (e) {
      if (conn && this.conn === conn) {
        this.conn = null;
        conn.close();
      }
      if (this._stopped || this.state === 'signed_out') throw e;
      this._setState('offline');
      this._scheduleReconnect(null);
      this._emit('error', e);
      throw e;
    }
    const reconnected = !this._fresh;
    this._fresh = false;
    this.attempt = 0;
    this.drainCloses = 0;
    this._setState('online');
    this._scheduleRefresh();
    this._emit('ready', { reconnected });
  }

  _onClose(conn, reason, message) {
    if (this.conn !== conn) return;
    this.conn = null;
    if (this._stopped) return;
    if (reason === CLOSE.signedOut) {
      this._signedOut(reason);
      return;
    }
    this._setState('offline');
    this._emit('closed', { reason, message });
    this._scheduleReconnect(reason);
  }

  /** The next reconnect delay: at once (< 1 s) after a first drain close, else backoff. */
  nextDelay(reason) {
    if (reason === CLOSE.draining && this.drainCloses++ === 0) return Math.round(this.random() * 1000);
    return backoffDelay(this.attempt++, { random: this.random });
  }

  _scheduleReconnect(reason) {
    if (this._stopped || this._reconnectTimer) return;
    const delay = this.nextDelay(reason);
    this._emit('reconnecting', { delay, attempt: this.attempt });
    this._reconnectTimer = this.timers.setTimeout(() => {
      this._reconnectTimer = null;
      this._connect().catch(() => {});
    }, delay);
  }

  // -- calls ------------------------------------------------------------------------------------
  /** Call a procedure with keyword arguments; `offline` when there is no session. */
  call(procedure, kwargs = {}) {
    if (!this.conn) return Promise.reject(new MessengerError(E.offline, 'not connected'));
    return this.conn.call(procedure, kwargs);
  }
}

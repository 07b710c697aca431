/**
 * Web Push opt-in (docs/PROTOCOL.md "Push notifications"): a service worker, the browser's push
 * subscription made with the server's VAPID key (`push.config`), handed to `push.register` as
 * platform "webpush". Tokens belong to the device (one login): the opt-in is remembered per user
 * in `storage` and `resume()` registers the browser's subscription again on the next login.
 *
 * The browser is injected (`serviceWorker`, `PushManager`, `Notification`), so the flow is
 * unit-tested with fakes; the defaults are the page's globals.
 */
import * as api from './api.js';

export const PLATFORM = 'webpush';
const OPT_IN_KEY = 'messenger.push.webpush'; // {[user_id]: true}

/** base64url (padding optional, RFC 4648 §5) → Uint8Array, as `applicationServerKey` wants it. */
export function base64UrlToBytes(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(text)) throw new TypeError('not base64url');
  const b64 = text.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
  if (b64.length % 4 === 1) throw new TypeError('not base64url');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

export class PushError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'PushError';
    this.code = code; // 'unsupported' | 'disabled' | 'denied' | 'failed'
  }
}

export class WebPush {
  /**
   * @param {object} o
   * @param {{call(p:string, kw?:object):Promise<any>, userId?:string, tokens?:object}} o.client a MessengerClient
   * @param {object} [o.serviceWorker] navigator.serviceWorker
   * @param {Function} [o.PushManager] window.PushManager (only its presence is checked)
   * @param {object} [o.Notification] window.Notification (requestPermission, permission)
   * @param {{get, set, remove}} [o.storage] where the opt-in is remembered
   * @param {string} [o.swUrl] the service worker script, served from the site root (scope `/`)
   */
  constructor({
    client,
    serviceWorker = globalThis.navigator?.serviceWorker,
    PushManager = globalThis.PushManager,
    Notification = globalThis.Notification,
    storage = null,
    swUrl = '/sw.js',
    scope = '/',
  }) {
    this.client = client;
    this.serviceWorker = serviceWorker;
    this.PushManager = PushManager;
    this.Notification = Notification;
    this.storage = storage;
    this.swUrl = swUrl;
    this.scope = scope;
    this._config = null;
    this._resumedDevice = null;
  }

  /** The browser can do Web Push (service workers, PushManager, Notification). */
  supported() {
    return Boolean(this.serviceWorker && this.PushManager && this.Notification);
  }

  /** `push.config()` of the server (asked once; a failed call is asked again next time). */
  async config() {
    if (!this._config) this._config = api.pushConfig(this.client).catch((e) => ((this._config = null), Promise.reject(e)));
    return this._config;
  }

  /** The browser can and the server does (its `push.config` lists "webpush" with a VAPID key). */
  async available() {
    if (!this.supported()) return false;
    const c = await this.config().catch(() => null);
    return Boolean(c && (c.platforms || []).includes(PLATFORM) && c.vapid_public_key);
  }

  /** The current user opted in on this browser (and has not opted out since). */
  enabled() {
    const id = this.client.userId;
    return Boolean(id && this._optIns()[id]);
  }

  _optIns() {
    return (this.storage && this.storage.get(OPT_IN_KEY)) || {};
  }

  _remember(on) {
    const id = this.client.userId;
    if (!this.storage || !id) return;
    const all = { ...this._optIns() };
    if (on) all[id] = true;
    else delete all[id];
    this.storage.set(OPT_IN_KEY, all);
  }

  async _key() {
    const c = await this.config();
    if (!(c.platforms || []).includes(PLATFORM) || !c.vapid_public_key)
      throw new PushError('disabled', 'push notifications are not enabled on this server');
    return base64UrlToBytes(c.vapid_public_key);
  }

  async _registration() {
    await this.serviceWorker.register(this.swUrl, { scope: this.scope });
    return this.serviceWorker.ready; // subscribe() needs an active worker
  }

  /** The browser's subscription made with `key` (an older one made with another key is dropped). */
  async _subscription(registration, key) {
    const pm = registration.pushManager;
    let sub = await pm.getSubscription();
    const old = sub?.options?.applicationServerKey;
    if (sub && old && !sameBytes(new Uint8Array(old), key)) {
      await sub.unsubscribe().catch(() => {});
      sub = null;
    }
    return sub || pm.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  }

  /**
   * Opt in (call it from a click: browsers ask for the permission only on a user gesture):
   * permission → service worker → subscribe with the VAPID key → `push.register`.
   */
  async enable() {
    if (!this.supported()) throw new PushError('unsupported', 'this browser cannot show push notifications');
    const permission = this.Notification.permission === 'granted' ? 'granted' : await this.Notification.requestPermission();
    if (permission !== 'granted')
      throw new PushError('denied', 'notifications are blocked for this site: allow them in the browser’s site settings');
    const key = await this._key();
    let sub;
    try {
      sub = await this._subscription(await this._registration(), key);
    } catch (e) {
      throw new PushError('failed', `the browser could not subscribe to push: ${e?.message || e}`);
    }
    await api.pushRegister(this.client, PLATFORM, sub.toJSON());
    this._remember(true);
    this._resumedDevice = this.client.tokens?.device_id ?? null;
    return sub;
  }

  /** Opt out: `push.unregister` (best effort: a dead endpoint is dropped by the server anyway) and unsubscribe. */
  async disable() {
    this._remember(false);
    if (!this.supported()) return;
    const registration = await this.serviceWorker.getRegistration(this.scope);
    const sub = await registration?.pushManager.getSubscription();
    if (!sub) return;
    let failed = null;
    await api.pushUnregister(this.client, PLATFORM, { endpoint: sub.endpoint }).catch((e) => (failed = e));
    await sub.unsubscribe();
    if (failed) console.warn('push.unregister failed (the server drops the dead endpoint later):', failed);
  }

  /**
   * After a login or page load (the `ready` event): if this user opted in here and the permission
   * still holds, register the browser's subscription for this device (subscribing again if the
   * browser dropped it). Once per device; answers whether it registered.
   */
  async resume() {
    const device = this.client.tokens?.device_id ?? null;
    if (!this.supported() || !this.enabled() || device === this._resumedDevice) return false;
    if (this.Notification.permission !== 'granted') {
      this._remember(false); // revoked in the browser's settings
      return false;
    }
    if (!(await this.available())) return false;
    this._resumedDevice = device;
    try {
      const sub = await this._subscription(await this._registration(), await this._key());
      await api.pushRegister(this.client, PLATFORM, sub.toJSON());
      return true;
    } catch (e) {
      this._resumedDevice = null;
      throw e;
    }
  }
}

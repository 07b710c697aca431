import { describe, expect, it, vi } from 'vitest';
import { WebPush, PushError, base64UrlToBytes } from '../src/lib/webpush.js';
import { memoryStorage } from '../src/lib/client.js';

const KEY = 'BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3qBUYIHBQFLXYp5Nksh8U';

describe('base64UrlToBytes', () => {
  it('decodes base64url with and without padding, - and _ included', () => {
    expect([...base64UrlToBytes('-_8')]).toEqual([0xfb, 0xff]);
    expect([...base64UrlToBytes('-_8=')]).toEqual([0xfb, 0xff]);
    expect([...base64UrlToBytes('')]).toEqual([]);
    expect([...base64UrlToBytes('AQIDBA')]).toEqual([1, 2, 3, 4]);
    const key = base64UrlToBytes(KEY);
    expect(key).toBeInstanceOf(Uint8Array);
    expect(key.length).toBe(65);
    expect(key[0]).toBe(4); // an uncompressed P-256 point
    expect(Buffer.from(key).toString('base64url')).toBe(KEY);
  });

  it('refuses what is not base64url', () => {
    for (const bad of ['a+b', 'a/b', 'a b', 'A', null, 12]) expect(() => base64UrlToBytes(bad)).toThrow(TypeError);
  });
});

/** A browser: navigator.serviceWorker, PushManager, Notification, with what they were asked. */
function fakeBrowser({ permission = 'default', answer = 'granted', existing = null } = {}) {
  const log = [];
  let current = existing;
  const subscription = (key) => {
    const s = {
      endpoint: `https://push.example.com/${log.length}`,
      options: { applicationServerKey: key.buffer },
      toJSON: () => ({ endpoint: s.endpoint, expirationTime: null, keys: { p256dh: 'p', auth: 'a' } }),
      unsubscribe: async () => (log.push(['unsubscribe', s.endpoint]), current === s && (current = null), true),
    };
    return s;
  };
  const pushManager = {
    getSubscription: async () => current,
    subscribe: async (o) => {
      log.push(['subscribe', o.userVisibleOnly, [...o.applicationServerKey]]);
      current = subscription(o.applicationServerKey);
      return current;
    },
  };
  const registration = { scope: 'http://h/', pushManager };
  let registered = false;
  const serviceWorker = {
    register: async (url, o) => (log.push(['register', url, o.scope]), (registered = true), registration),
    get ready() {
      return Promise.resolve(registration);
    },
    getRegistration: async () => (registered ? registration : undefined),
  };
  const Notification = {
    permission,
    requestPermission: async () => (log.push(['permission']), (Notification.permission = answer)),
  };
  return {
    log,
    serviceWorker,
    Notification,
    PushManager: function PushManager() {},
    current: () => current,
    setCurrent: (s) => (current = s),
    subscription,
    registerNow: () => (registered = true),
  };
}

function fakeClient({ platforms = ['fcm', 'webpush'], key = KEY, userId = 'u1', deviceId = 'd1' } = {}) {
  const calls = [];
  const c = {
    calls,
    fail: {},
    tokens: { user_id: userId, device_id: deviceId },
    get userId() {
      return c.tokens?.user_id ?? null;
    },
    call: async (p, kw) => {
      calls.push([p, kw]);
      if (c.fail[p]) throw c.fail[p];
      if (p === 'messenger.push.config') return { platforms, vapid_public_key: key };
      return {};
    },
  };
  return c;
}

const make = (b, client, storage = memoryStorage()) =>
  new WebPush({ client, serviceWorker: b.serviceWorker, PushManager: b.PushManager, Notification: b.Notification, storage });

describe('WebPush', () => {
  it('is available when the browser has the APIs and the server lists webpush', async () => {
    const b = fakeBrowser();
    expect(await make(b, fakeClient()).available()).toBe(true);
    expect(await make(b, fakeClient({ platforms: ['fcm'], key: null })).available()).toBe(false);
    const noSw = new WebPush({ client: fakeClient(), serviceWorker: undefined, PushManager: b.PushManager, Notification: b.Notification });
    expect(await noSw.available()).toBe(false);
    const broken = fakeClient();
    broken.fail['messenger.push.config'] = new Error('offline');
    expect(await make(b, broken).available()).toBe(false);
    delete broken.fail['messenger.push.config'];
    const wp = make(b, broken);
    expect(await wp.available()).toBe(true);
    await wp.available();
    expect(broken.calls.filter(([p]) => p === 'messenger.push.config').length).toBe(2); // the failed one, then once
  });

  it('enable: permission, service worker at /, subscribe with the VAPID key, push.register with toJSON()', async () => {
    const b = fakeBrowser();
    const client = fakeClient();
    const wp = make(b, client);
    expect(wp.enabled()).toBe(false);
    await wp.enable();
    expect(b.log.map((l) => l[0])).toEqual(['permission', 'register', 'subscribe']);
    expect(b.log[1]).toEqual(['register', '/sw.js', '/']);
    expect(b.log[2][1]).toBe(true);
    expect(b.log[2][2]).toEqual([...base64UrlToBytes(KEY)]);
    const reg = client.calls.find(([p]) => p === 'messenger.push.register');
    expect(reg[1]).toEqual({ platform: 'webpush', token: b.current().toJSON() });
    expect(wp.enabled()).toBe(true);
  });

  it('enable reuses a subscription made with the same key and replaces one made with another key', async () => {
    const b = fakeBrowser({ permission: 'granted' });
    b.setCurrent(b.subscription(base64UrlToBytes(KEY)));
    const same = b.current();
    await make(b, fakeClient()).enable();
    expect(b.current()).toBe(same);
    expect(b.log.some(([k]) => k === 'subscribe' || k === 'permission')).toBe(false);

    const old = b.subscription(new Uint8Array(65).fill(4));
    b.setCurrent(old);
    await make(b, fakeClient()).enable();
    expect(b.log.filter(([k]) => k === 'unsubscribe')).toEqual([['unsubscribe', old.endpoint]]);
    expect(b.current()).not.toBe(old);
  });

  it('enable fails plainly: denied permission, server without Web Push, no browser support', async () => {
    const denied = fakeBrowser({ answer: 'denied' });
    const client = fakeClient();
    const e = await make(denied, client).enable().catch((x) => x);
    expect(e).toBeInstanceOf(PushError);
    expect(e.code).toBe('denied');
    expect(e.message).toMatch(/blocked/);
    expect(denied.log.map((l) => l[0])).toEqual(['permission']);
    expect(client.calls.some(([p]) => p === 'messenger.push.register')).toBe(false);

    const off = await make(fakeBrowser(), fakeClient({ platforms: ['fcm'], key: null })).enable().catch((x) => x);
    expect(off.code).toBe('disabled');

    const none = new WebPush({ client: fakeClient(), serviceWorker: undefined });
    expect((await none.enable().catch((x) => x)).code).toBe('unsupported');

    const b = fakeBrowser({ permission: 'granted' });
    b.serviceWorker.register = async () => {
      throw new Error('SecurityError: insecure');
    };
    const failed = await make(b, fakeClient()).enable().catch((x) => x);
    expect(failed.code).toBe('failed');
    expect(failed.message).toMatch(/insecure/);
  });

  it('a refused push.register is an error and the opt-in is not remembered', async () => {
    const client = fakeClient();
    client.fail['messenger.push.register'] = new Error("push platform 'webpush' is not enabled on this server");
    const wp = make(fakeBrowser(), client);
    await expect(wp.enable()).rejects.toThrow(/not enabled/);
    expect(wp.enabled()).toBe(false);
  });

  it('disable: push.unregister by endpoint, unsubscribe, forget the opt-in (also when the server cannot be reached)', async () => {
    const b = fakeBrowser();
    const client = fakeClient();
    const wp = make(b, client);
    await wp.enable();
    const endpoint = b.current().endpoint;
    await wp.disable();
    expect(client.calls.at(-1)).toEqual(['messenger.push.unregister', { platform: 'webpush', token: { endpoint } }]);
    expect(b.current()).toBe(null);
    expect(wp.enabled()).toBe(false);

    await wp.enable();
    client.fail['messenger.push.unregister'] = new Error('offline');
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    await wp.disable();
    warn.mockRestore();
    expect(b.current()).toBe(null);
    expect(wp.enabled()).toBe(false);
  });

  it('resume: a new login (device) of a user who opted in registers the subscription again, once per device', async () => {
    const b = fakeBrowser();
    const storage = memoryStorage();
    const client = fakeClient();
    await make(b, client, storage).enable();
    const sub = b.current();

    // a new page load: same device, registered again (idempotent on the server), then not again
    const later = fakeClient({ deviceId: 'd2' });
    const wp = make(b, later, storage);
    expect(await wp.resume()).toBe(true);
    expect(later.calls.filter(([p]) => p === 'messenger.push.register')).toEqual([
      ['messenger.push.register', { platform: 'webpush', token: sub.toJSON() }],
    ]);
    expect(await wp.resume()).toBe(false);
    later.tokens = { user_id: 'u1', device_id: 'd3' }; // logged out and in again: a new device
    expect(await wp.resume()).toBe(true);
    expect(later.calls.filter(([p]) => p === 'messenger.push.register').length).toBe(2);
    expect(b.log.filter(([k]) => k === 'subscribe').length).toBe(1); // the same subscription

    // the browser dropped the subscription: subscribed anew (permission still granted)
    b.setCurrent(null);
    later.tokens = { user_id: 'u1', device_id: 'd4' };
    expect(await wp.resume()).toBe(true);
    expect(b.log.filter(([k]) => k === 'subscribe').length).toBe(2);
  });

  it('resume does nothing for a user who did not opt in, and forgets the opt-in when the permission was revoked', async () => {
    const b = fakeBrowser();
    const storage = memoryStorage();
    await make(b, fakeClient(), storage).enable();
    const other = fakeClient({ userId: 'u2' });
    expect(await make(b, other, storage).resume()).toBe(false);
    expect(other.calls).toEqual([]);

    b.Notification.permission = 'denied';
    const same = fakeClient({ deviceId: 'd9' });
    const wp = make(b, same, storage);
    expect(await wp.resume()).toBe(false);
    expect(wp.enabled()).toBe(false);
    expect(same.calls).toEqual([]);
  });
});

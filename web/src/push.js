/**
 * The app's Web Push opt-in: one WebPush (src/lib/webpush.js) per client, with the page's
 * service worker, PushManager and Notification, and the opt-in remembered in localStorage.
 * The service worker is src/sw/sw.js, built to /sw.js (scope /).
 */
import { WebPush } from './lib/webpush.js';

const localStore = {
  get: (k) => JSON.parse(localStorage.getItem(k) || 'null'),
  set: (k, v) => localStorage.setItem(k, JSON.stringify(v)),
  remove: (k) => localStorage.removeItem(k),
};
const all = new WeakMap();

export function webPush(client) {
  if (!all.has(client)) all.set(client, new WebPush({ client, storage: typeof localStorage !== 'undefined' ? localStore : null }));
  return all.get(client);
}

/** The browser can (service worker, PushManager, Notification) and the server's `push.config` lists "webpush". */
export const pushAvailable = (client) => webPush(client).available();
/** This user opted in on this browser. */
export const pushEnabled = (client) => webPush(client).enabled();
/** Opt in: permission, service worker, subscription, `push.register`. Throws a PushError with a readable message. */
export const enablePush = (client) => webPush(client).enable();
/** Opt out: `push.unregister` and unsubscribe. */
export const disablePush = (client) => webPush(client).disable();
/** On `ready`: register the browser's subscription again for a new login (device) of a user who opted in. */
export const resumePush = (client) => webPush(client).resume();

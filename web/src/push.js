/**
 * PUSH HOOK (Web Push opt-in with a service worker): being built in parallel (push issue), NOT
 * implemented here. The app calls `pushAvailable()` to decide whether to show the opt-in button
 * and `enablePush(client)` when the user asks for it. The push work replaces this module: register
 * the service worker, subscribe with the server's VAPID key and hand the subscription to the
 * server's push procedure.
 */
export function pushAvailable() {
  return false; // TODO(push): 'serviceWorker' in navigator && 'PushManager' in window
}

export async function enablePush(_client) {
  throw new Error('push notifications are not available yet');
}

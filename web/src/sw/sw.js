/**
 * The service worker (built to dist/sw.js, served at /sw.js: scope /): shows the Web Push of a
 * new message, one notification per chat, and opens the chat when it is clicked.
 */
import { clickAction, notificationFromPush } from './handlers.js';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  const { title, options } = notificationFromPush(event.data ? event.data.text() : null);
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
      const action = clickAction(event.notification.data, windows, self.location.origin);
      if (action.focus) {
        await action.focus.focus();
        if (action.message) action.focus.postMessage(action.message);
      } else {
        await self.clients.openWindow(action.open);
      }
    })()
  );
});

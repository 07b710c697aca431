import './style.css';
import { MessengerClient } from './lib/client.js';
import { autobahnConnect } from './lib/autobahn-transport.js';
import { Store } from './ui/store.js';
import { mount } from './ui/app.js';
import { resumePush } from './push.js';
import { chatIdOfHash, OPEN_CHAT } from './route.js';

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const storage = {
  get: (k) => JSON.parse(localStorage.getItem(k) || 'null'),
  set: (k, v) => localStorage.setItem(k, JSON.stringify(v)),
  remove: (k) => localStorage.removeItem(k),
};
// tabs share the tokens (one device): refreshes are serialized with a Web Lock when available
const lock = navigator.locks ? (name, fn) => navigator.locks.request(name, fn) : (_name, fn) => fn();
const client = new MessengerClient({
  url: wsUrl,
  connect: autobahnConnect,
  storage,
  lock,
  deviceName: navigator.userAgent.slice(0, 64),
});
window.addEventListener('storage', (e) => {
  if (e.key === 'messenger.tokens' && client.state !== 'signed_out' && client.tokens) client.adoptTokens(JSON.parse(e.newValue || 'null'));
});
const store = new Store(client);
window.addEventListener('online', () => client.reconnectNow());
window.addEventListener('offline', () => client.networkLost());
document.addEventListener('visibilitychange', () => store.openChatId && store.markRead(store.openChatId));
// push: a user who opted in on this browser gets the subscription registered for each new login
client.on('ready', () => {
  window.messenger.pushResumed = resumePush(client).catch((e) => (console.warn('messenger: push:', e), false));
});
// a chat to open: #/chat/<id> (a notification opened this window) or the service worker's message
// (a notification focused it)
const openFromHash = () => {
  const chatId = chatIdOfHash(location.hash);
  if (!chatId) return;
  history.replaceState(null, '', location.pathname + location.search);
  const open = () => store.openChat(chatId).catch((e) => store.fail(e));
  if (client.state === 'online') open();
  else {
    const off = client.on('ready', () => (off(), open()));
  }
};
window.addEventListener('hashchange', openFromHash);
navigator.serviceWorker?.addEventListener('message', (e) => {
  if (e.data?.type === OPEN_CHAT && typeof e.data.chat_id === 'string' && client.tokens) store.openChat(e.data.chat_id).catch((err) => store.fail(err));
});
window.messenger = { client, store }; // for debugging and the e2e tests
mount(document.getElementById('app'), { store, client });
client.resume().catch(() => {});
openFromHash();

import './style.css';
import { MessengerClient } from './lib/client.js';
import { autobahnConnect } from './lib/autobahn-transport.js';
import { Store } from './ui/store.js';
import { mount } from './ui/app.js';

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
window.messenger = { client, store }; // for debugging and the e2e tests
mount(document.getElementById('app'), { store, client });
client.resume().catch(() => {});

/**
 * The service worker's logic as pure functions (unit-tested; ./sw.js wires them to the events).
 * A push payload is the server's JSON (docs/PROTOCOL.md "Push notifications"):
 * `{title, body, tag, type, chat_id, message_id, seq, sender_id}`, `tag` = `chat_id`.
 */

/** The app's route of a chat (src/route.js reads it on load). */
export const chatPath = (chatId) => `/#/chat/${encodeURIComponent(chatId)}`;

/** The message a window gets when a notification of one of its chats is clicked. */
export const OPEN_CHAT = 'messenger.open_chat';

/**
 * The push's payload (JSON text, or anything else) → `{title, options}` for
 * `registration.showNotification(title, options)`. One notification per chat: the tag is the chat,
 * so a newer message replaces the older one (and alerts again: `renotify`).
 */
export function notificationFromPush(text) {
  let p = null;
  try {
    p = text ? JSON.parse(text) : null;
  } catch {
    p = null;
  }
  if (!p || typeof p !== 'object') return { title: 'Messenger', options: { body: text ? String(text).slice(0, 200) : 'New message' } };
  const chatId = typeof p.chat_id === 'string' ? p.chat_id : null;
  const tag = typeof p.tag === 'string' && p.tag ? p.tag : chatId;
  const options = {
    body: typeof p.body === 'string' ? p.body : '',
    data: {
      type: p.type ?? 'message.new',
      chat_id: chatId,
      message_id: p.message_id ?? null,
      seq: p.seq ?? null,
      sender_id: p.sender_id ?? null,
      url: chatId ? chatPath(chatId) : '/',
    },
  };
  if (tag) Object.assign(options, { tag, renotify: true });
  return { title: typeof p.title === 'string' && p.title ? p.title : 'New message', options };
}

/**
 * A click on a notification (its `data`) with the open windows of the app (`clients.matchAll`)
 * → `{focus: client, message}` (focus that window and tell it to open the chat) or
 * `{open: url}` (no window: open one on the chat's route). A focused or visible window is
 * preferred; only windows of this `origin` count.
 */
export function clickAction(data, windows, origin) {
  const chatId = data?.chat_id ?? null;
  const ours = (windows || []).filter((w) => {
    try {
      return new URL(w.url).origin === origin;
    } catch {
      return false;
    }
  });
  const rank = (w) => (w.focused ? 2 : w.visibilityState === 'visible' ? 1 : 0);
  const best = ours.sort((a, b) => rank(b) - rank(a))[0];
  if (best) return { focus: best, message: chatId ? { type: OPEN_CHAT, chat_id: chatId } : null };
  return { open: chatId ? chatPath(chatId) : '/' };
}

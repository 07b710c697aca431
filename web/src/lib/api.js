/** The procedures of docs/PROTOCOL.md as functions of a MessengerClient (keyword arguments). */

const id = () =>
  globalThis.crypto?.randomUUID?.().replace(/-/g, '') ?? `${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`;

/** A new `client_msg_id` (1-64 of A-Z a-z 0-9 _ . : -); keep it to retry a send. */
export const newClientMsgId = () => `w-${id()}`;

export const me = (c) => c.call('messenger.user.me');
export const getUsers = (c, userIds) => c.call('messenger.user.get', { user_ids: userIds });
export const searchUsers = (c, query, limit = 20) => c.call('messenger.user.search', { query, limit });

export const listChats = (c, { limit = 50, cursor = null } = {}) =>
  c.call('messenger.chat.list', cursor ? { limit, cursor } : { limit });
export const getChat = (c, chatId) => c.call('messenger.chat.get', { chat_id: chatId });
export const createDirect = (c, userId) => c.call('messenger.chat.create_direct', { user_id: userId });
export const createGroup = (c, title, memberIds) =>
  c.call('messenger.chat.create_group', { title, member_ids: memberIds });
export const typing = (c, chatId) => c.call('messenger.chat.typing', { chat_id: chatId });

export const sendMessage = (c, { chatId, clientMsgId, text = null, mediaIds = null, replyTo = null }) => {
  const kw = { chat_id: chatId, client_msg_id: clientMsgId };
  if (text) kw.text = text;
  if (mediaIds && mediaIds.length) kw.media_ids = mediaIds;
  if (replyTo != null) kw.reply_to = replyTo;
  return c.call('messenger.message.send', kw);
};
export const history = (c, chatId, { beforeSeq = null, limit = 30 } = {}) =>
  c.call('messenger.message.history', beforeSeq != null ? { chat_id: chatId, before_seq: beforeSeq, limit } : { chat_id: chatId, limit });
export const editMessage = (c, chatId, messageId, text) =>
  c.call('messenger.message.edit', { chat_id: chatId, message_id: messageId, text });
export const deleteMessage = (c, chatId, messageId) =>
  c.call('messenger.message.delete', { chat_id: chatId, message_id: messageId });
export const react = (c, chatId, messageId, emoji) =>
  c.call('messenger.message.react', { chat_id: chatId, message_id: messageId, emoji });
export const markDelivered = (c, chatId, upToSeq) =>
  c.call('messenger.message.mark_delivered', { chat_id: chatId, up_to_seq: upToSeq });
export const markRead = (c, chatId, upToSeq) => c.call('messenger.message.mark_read', { chat_id: chatId, up_to_seq: upToSeq });
export const presence = (c, userIds) => c.call('messenger.presence.get', { user_ids: userIds });

export const getMedia = (c, mediaId) => c.call('messenger.media.get', { media_id: mediaId });

/**
 * Upload a file (a Blob/File): `media.create_upload` → HTTP PUT of the bytes to `upload_url`
 * with `upload_headers` → `media.complete`. Answers the media descriptor.
 */
export async function uploadMedia(c, file, { fetchImpl = globalThis.fetch } = {}) {
  const up = await c.call('messenger.media.create_upload', {
    content_type: file.type || 'application/octet-stream',
    size: file.size,
    ...(file.name ? { filename: file.name.slice(0, 255).replace(/[/\\\x00-\x1f]/g, '_') } : {}),
  });
  const res = await fetchImpl(up.upload_url, { method: up.upload_method || 'PUT', headers: up.upload_headers, body: file });
  if (!res.ok) throw new Error(`upload failed: HTTP ${res.status}`);
  return c.call('messenger.media.complete', { media_id: up.media_id });
}

// push notifications (docs/PROTOCOL.md "Push notifications"); Web Push: ./webpush.js
export const pushConfig = (c) => c.call('messenger.push.config');
export const pushRegister = (c, platform, token) => c.call('messenger.push.register', { platform, token });
export const pushUnregister = (c, platform, token) => c.call('messenger.push.unregister', { platform, token });

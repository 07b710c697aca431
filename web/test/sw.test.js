import { describe, expect, it } from 'vitest';
import { OPEN_CHAT, chatPath, clickAction, notificationFromPush } from '../src/sw/handlers.js';
import { OPEN_CHAT as APP_OPEN_CHAT, chatIdOfHash } from '../src/route.js';

// what components/push sends (docs/PROTOCOL.md "Push notifications")
const payload = {
  title: 'Alice',
  body: 'Are you there, Bob?',
  tag: 'c_123',
  type: 'message.new',
  chat_id: 'c_123',
  message_id: 'm_9',
  seq: 7,
  sender_id: 'u_alice',
};

describe('service worker: push', () => {
  it('shows the payload with the chat as tag (one notification per chat) and the chat in data', () => {
    const { title, options } = notificationFromPush(JSON.stringify(payload));
    expect(title).toBe('Alice');
    expect(options).toEqual({
      body: 'Are you there, Bob?',
      tag: 'c_123',
      renotify: true,
      data: { type: 'message.new', chat_id: 'c_123', message_id: 'm_9', seq: 7, sender_id: 'u_alice', url: '/#/chat/c_123' },
    });
  });

  it('falls back to the chat id as tag, and to plain text for a payload that is not JSON', () => {
    const { tag, ...rest } = payload;
    expect(notificationFromPush(JSON.stringify(rest)).options.tag).toBe('c_123');
    expect(notificationFromPush('hello')).toEqual({ title: 'Messenger', options: { body: 'hello' } });
    expect(notificationFromPush(null)).toEqual({ title: 'Messenger', options: { body: 'New message' } });
    const bare = notificationFromPush('{}');
    expect(bare.title).toBe('New message');
    expect(bare.options.tag).toBeUndefined();
    expect(bare.options.data.url).toBe('/');
  });
});

describe('service worker: notification click', () => {
  const data = notificationFromPush(JSON.stringify(payload)).options.data;
  const origin = 'https://chat.example.com';

  it('focuses an open window of the app (the focused or visible one first) and tells it the chat', () => {
    const hidden = { url: `${origin}/`, visibilityState: 'hidden', focused: false };
    const visible = { url: `${origin}/`, visibilityState: 'visible', focused: false };
    const elsewhere = { url: 'https://other.example.com/', visibilityState: 'visible', focused: true };
    const a = clickAction(data, [hidden, elsewhere, visible], origin);
    expect(a.focus).toBe(visible);
    expect(a.message).toEqual({ type: OPEN_CHAT, chat_id: 'c_123' });
    expect(clickAction(data, [hidden], origin).focus).toBe(hidden);
  });

  it('opens a window on the chat route when none is open', () => {
    expect(clickAction(data, [], origin)).toEqual({ open: '/#/chat/c_123' });
    expect(clickAction(data, [{ url: 'https://other.example.com/' }], origin)).toEqual({ open: '/#/chat/c_123' });
    expect(clickAction({}, [], origin)).toEqual({ open: '/' });
  });

  it('the route the worker opens is the one the app reads, and they agree on the message', () => {
    for (const id of ['c_123', 'a b/c?d#e', 'ünï']) expect(chatIdOfHash(chatPath(id).slice(1))).toBe(id);
    expect(chatIdOfHash('#/chat/')).toBe(null);
    expect(chatIdOfHash('')).toBe(null);
    expect(chatIdOfHash('#/chat/%E0%A4%A')).toBe(null);
    expect(APP_OPEN_CHAT).toBe(OPEN_CHAT);
  });
});

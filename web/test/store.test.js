import { describe, expect, it } from 'vitest';
import { Store } from '../src/ui/store.js';

/** A client double: records calls, answers from `answers`, lets the test emit events. */
function fakeClient(answers = {}) {
  const listeners = new Map();
  const c = {
    state: 'online',
    calls: [],
    fail: null,
    on: (t, fn) => listeners.set(t, [...(listeners.get(t) || []), fn]),
    emit: (t, p) => (listeners.get(t) || []).forEach((fn) => fn(p)),
    call: async (p, kw) => {
      c.calls.push([p, kw]);
      if (c.fail) throw c.fail;
      const a = answers[p];
      return typeof a === 'function' ? a(kw) : a;
    },
  };
  return c;
}

const ME = { user_id: 'me', display_name: 'Me' };
const chat = (over = {}) => ({
  chat_id: 'c1',
  type: 'direct',
  member_ids: ['me', 'bob'],
  last_message: null,
  unread_count: 0,
  last_read_seq: 0,
  last_delivered_seq: 0,
  updated_at: 1,
  ...over,
});
const msg = (seq, sender = 'bob', over = {}) => ({
  message_id: `m${seq}`,
  chat_id: 'c1',
  seq,
  sender_id: sender,
  client_msg_id: `x${seq}`,
  text: `t${seq}`,
  media: [],
  reactions: {},
  sent_at: seq,
  deleted: false,
  ...over,
});
const event = (type, data, id = 1) => ({ type, update_id: id, chat_id: 'c1', at: 0, data });

function ready(client) {
  const store = new Store(client);
  store.me = ME;
  store.chats.set('c1', chat());
  return store;
}

describe('Store', () => {
  it('a new message from someone else counts as unread and is marked delivered', () => {
    const client = fakeClient();
    const store = ready(client);
    client.emit('update', event('message.new', msg(1)));
    client.emit('update', event('message.new', msg(2), 2));
    expect(store.chats.get('c1').unread_count).toBe(2);
    expect(store.chats.get('c1').last_message.text).toBe('t2');
    expect(client.calls.filter(([p]) => p === 'messenger.message.mark_delivered').map(([, kw]) => kw.up_to_seq)).toEqual([1, 2]);
  });

  it('sending shows the message at once; its message.new replaces it; a failure keeps it with the same id for retry', async () => {
    const client = fakeClient({ 'messenger.message.send': {} });
    const store = ready(client);
    await store.send('c1', { text: 'hello' });
    const [p] = store.pending.get('c1');
    const sent = client.calls.find(([x]) => x === 'messenger.message.send')[1];
    expect(sent.client_msg_id).toBe(p.client_msg_id);
    client.emit('update', event('message.new', msg(1, 'me', { client_msg_id: p.client_msg_id, text: 'hello' })));
    expect(store.pending.get('c1')).toEqual([]);

    client.fail = Object.assign(new Error('not connected'), { code: 'offline' });
    await store.send('c1', { text: 'again' });
    const [q] = store.pending.get('c1');
    expect(q.status).toBe('failed');
    client.fail = null;
    await store.retryPending();
    const sends = client.calls.filter(([x]) => x === 'messenger.message.send').map(([, kw]) => kw.client_msg_id);
    expect(sends.slice(-2)).toEqual([q.client_msg_id, q.client_msg_id]);
    expect(q.status).toBe('sent');
  });

  it('ticks: one when sent, two when every other member has it, three when all read it', () => {
    const client = fakeClient();
    const store = ready(client);
    const c = store.chats.get('c1');
    const m = msg(3, 'me');
    expect(store.ticks(c, m)).toBe(1);
    client.emit('update', event('receipt.delivered', { user_id: 'bob', up_to_seq: 3 }));
    expect(store.ticks(c, m)).toBe(2);
    client.emit('update', event('receipt.read', { user_id: 'bob', up_to_seq: 5 }, 2));
    expect(store.ticks(c, m)).toBe(3);
  });

  it('my own read receipt (another device) clears the unread count', () => {
    const client = fakeClient();
    const store = ready(client);
    client.emit('update', event('message.new', msg(1)));
    client.emit('update', event('receipt.read', { user_id: 'me', up_to_seq: 1 }, 2));
    expect(store.chats.get('c1').unread_count).toBe(0);
  });

  it('history pages go upward until the first message', async () => {
    const all = Array.from({ length: 5 }, (_, i) => msg(i + 1));
    const client = fakeClient({
      'messenger.message.history': ({ before_seq, limit }) => ({
        messages: all.filter((m) => before_seq == null || m.seq < before_seq).reverse().slice(0, limit),
      }),
      'messenger.user.get': { users: [] },
    });
    const store = ready(client);
    await store.loadOlder('c1', 2);
    expect(store.timeline('c1').stored.map((m) => m.seq)).toEqual([4, 5]);
    await store.loadOlder('c1', 2);
    await store.loadOlder('c1', 2);
    expect(store.timeline('c1').stored.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(store.timeline('c1').hasMore).toBe(false);
  });

  it('typing shows for a few seconds; being removed from a chat drops it', () => {
    const client = fakeClient();
    const store = ready(client);
    store.users.set('bob', { user_id: 'bob', display_name: 'Bob' });
    client.emit('typing', { type: 'typing', update_id: null, chat_id: 'c1', data: { user_id: 'bob' } });
    expect(store.typingIn('c1')).toEqual(['Bob']);
    client.emit('update', event('chat.member_removed', chat({ member_ids: ['bob'] })));
    expect(store.chats.has('c1')).toBe(false);
  });
});

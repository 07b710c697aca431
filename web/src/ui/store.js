/**
 * The app's state, driven by the MessengerClient's events and the UI's actions. Plain objects;
 * `subscribe(fn)` is called after every change (the Preact view re-renders).
 */
import * as api from '../lib/api.js';

const TYPING_MS = 5000;
const hidden = () => typeof document !== 'undefined' && document.hidden;

export class Store {
  constructor(client) {
    this.client = client;
    this.listeners = new Set();
    this.reset();
    client.on('update', (e) => this.onUpdate(e));
    client.on('typing', (e) => this.onTyping(e));
    client.on('presence', (e) => this.setPresence(e.data.user_id, e.data));
    client.on('state', (s) => {
      this.connection = s;
      if (s === 'signed_out') this.reset();
      this.changed();
    });
    client.on('ready', (r) => this.onReady(r));
    client.on('reset', () => this.onReady({ reconnected: false }));
  }

  reset() {
    this.me = null;
    this.connection = this.client.state;
    this.users = new Map();
    this.presence = new Map();
    this.chats = new Map();
    this.messages = new Map(); // chat_id -> {bySeq: Map, oldest, hasMore, loading}
    this.pending = new Map(); // chat_id -> [{client_msg_id, text, media_ids, status, at}]
    this.receipts = new Map(); // chat_id -> {delivered: {user: seq}, read: {user: seq}}
    this.typing = new Map(); // chat_id -> Map(user_id -> until)
    this.media = new Map(); // media_id -> descriptor (with URLs)
    this.openChatId = null;
    this.error = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    for (const fn of this.listeners) fn();
  }

  // -- loading ----------------------------------------------------------------------------------
  async onReady({ reconnected }) {
    try {
      if (!this.me) this.me = await api.me(this.client);
      const { chats } = await api.listChats(this.client, { limit: 100 });
      for (const c of chats) {
        this.chats.set(c.chat_id, c);
        // what arrived while this device was away is delivered now
        const last = c.last_message?.seq ?? 0;
        if (last > (c.last_delivered_seq ?? 0) && c.last_message?.sender_id !== this.me.user_id)
          api.markDelivered(this.client, c.chat_id, last).catch(() => {});
      }
      await this.loadUsers(chats.flatMap((c) => c.member_ids));
      await this.refreshPresence();
      if (reconnected) await this.retryPending();
      if (this.openChatId && !this.messages.has(this.openChatId)) await this.loadOlder(this.openChatId);
      this.changed();
    } catch (e) {
      this.fail(e);
    }
  }

  fail(e) {
    this.error = e?.message || String(e);
    console.warn('messenger:', e);
    this.changed();
  }

  async loadUsers(ids) {
    const missing = [...new Set(ids)].filter((id) => !this.users.has(id));
    for (let i = 0; i < missing.length; i += 100) {
      const { users } = await api.getUsers(this.client, missing.slice(i, i + 100));
      for (const u of users) this.users.set(u.user_id, u);
    }
  }

  async refreshPresence(only = null) {
    const all = only ?? [...this.chats.values()].flatMap((c) => c.member_ids);
    const ids = [...new Set(all)].filter((id) => id !== this.me?.user_id);
    for (let i = 0; i < ids.length; i += 100) {
      const { presence } = await api.presence(this.client, ids.slice(i, i + 100));
      for (const [id, p] of Object.entries(presence)) this.presence.set(id, p);
    }
  }

  /** A chat this user just created (or got): keep it, with its members' profiles and presence. */
  async addChat(chat) {
    this.chats.set(chat.chat_id, { ...this.chats.get(chat.chat_id), ...chat });
    await this.loadUsers(chat.member_ids);
    await this.refreshPresence(chat.member_ids.filter((id) => !this.presence.has(id)));
    this.changed();
  }

  setPresence(userId, p) {
    this.presence.set(userId, { online: p.online, last_seen: p.last_seen });
    this.changed();
  }

  sortedChats() {
    return [...this.chats.values()].sort((a, b) => (b.last_message?.sent_at ?? b.updated_at ?? 0) - (a.last_message?.sent_at ?? a.updated_at ?? 0));
  }

  chatTitle(chat) {
    if (!chat) return '';
    if (chat.type === 'direct') {
      const other = chat.member_ids.find((id) => id !== this.me?.user_id) ?? this.me?.user_id;
      const u = this.users.get(other);
      return u ? u.display_name : 'direct chat';
    }
    return chat.title || 'group';
  }

  otherMember(chat) {
    return chat?.type === 'direct' ? chat.member_ids.find((id) => id !== this.me?.user_id) : null;
  }

  thread(chatId) {
    if (!this.messages.has(chatId)) this.messages.set(chatId, { bySeq: new Map(), oldest: null, hasMore: true, loading: false });
    return this.messages.get(chatId);
  }

  /** Messages of a chat, oldest first, then the pending ones. */
  timeline(chatId) {
    const t = this.messages.get(chatId);
    const stored = t ? [...t.bySeq.values()].sort((a, b) => a.seq - b.seq) : [];
    return { stored, pending: this.pending.get(chatId) || [], hasMore: t?.hasMore ?? true, loading: t?.loading ?? false };
  }

  async loadOlder(chatId, pageSize = 30) {
    const t = this.thread(chatId);
    if (t.loading || !t.hasMore) return;
    t.loading = true;
    this.changed();
    try {
      const { messages } = await api.history(this.client, chatId, { beforeSeq: t.oldest, limit: pageSize });
      for (const m of messages) t.bySeq.set(m.seq, m);
      if (messages.length) t.oldest = Math.min(...messages.map((m) => m.seq));
      t.hasMore = messages.length === pageSize && t.oldest > 1;
      await this.loadUsers(messages.map((m) => m.sender_id));
    } catch (e) {
      this.fail(e);
    } finally {
      t.loading = false;
      this.changed();
    }
  }

  // -- opening and reading ----------------------------------------------------------------------
  async openChat(chatId) {
    this.openChatId = chatId;
    this.changed();
    if (!this.messages.has(chatId)) await this.loadOlder(chatId);
    this.markRead(chatId);
    this.loadReceipts(chatId);
  }

  /** The other members' receipts as the server has them (chat.get): ticks for messages older
   * than this session; receipt events keep them current from here on. Marks only move forward. */
  async loadReceipts(chatId) {
    try {
      const chat = await api.getChat(this.client, chatId);
      const r = this.receiptsOf(chatId);
      for (const [user, marks] of Object.entries(chat.receipts || {})) {
        r.delivered[user] = Math.max(r.delivered[user] ?? 0, marks.last_delivered_seq ?? 0, marks.last_read_seq ?? 0);
        r.read[user] = Math.max(r.read[user] ?? 0, marks.last_read_seq ?? 0);
      }
      this.changed();
    } catch (e) {
      console.warn('messenger: receipts of', chatId, e);
    }
  }

  markRead(chatId) {
    const chat = this.chats.get(chatId);
    if (!chat || chatId !== this.openChatId || hidden()) return;
    const last = chat.last_message?.seq ?? 0;
    if (last > (chat.last_read_seq ?? 0)) {
      chat.last_read_seq = last;
      chat.unread_count = 0;
      api.markRead(this.client, chatId, last).catch(() => {});
      this.changed();
    }
  }

  // -- sending ----------------------------------------------------------------------------------
  async send(chatId, { text, mediaIds = null, media = null }) {
    const p = { client_msg_id: api.newClientMsgId(), text, media_ids: mediaIds, media, status: 'sending', at: Date.now() };
    if (!this.pending.has(chatId)) this.pending.set(chatId, []);
    this.pending.get(chatId).push(p);
    this.changed();
    await this.trySend(chatId, p);
  }

  async trySend(chatId, p) {
    p.status = 'sending';
    this.changed();
    try {
      // the same client_msg_id on every try: the server stores it once
      await api.sendMessage(this.client, { chatId, clientMsgId: p.client_msg_id, text: p.text, mediaIds: p.media_ids });
      p.status = 'sent'; // shown until its message.new arrives
    } catch (e) {
      p.status = 'failed';
      p.error = e?.message;
    }
    this.changed();
  }

  async retryPending() {
    for (const [chatId, list] of this.pending) {
      for (const p of list) if (p.status === 'failed') await this.trySend(chatId, p);
    }
  }

  // -- events -----------------------------------------------------------------------------------
  onUpdate(e) {
    const d = e.data;
    switch (e.type) {
      case 'message.new':
      case 'message.edited':
      case 'message.deleted':
      case 'message.reaction': {
        const t = this.messages.get(e.chat_id);
        if (t) t.bySeq.set(d.seq, d);
        if (e.type === 'message.new') this.onNewMessage(e.chat_id, d);
        else {
          const chat = this.chats.get(e.chat_id);
          if (chat?.last_message?.seq === d.seq) chat.last_message = d;
        }
        break;
      }
      case 'receipt.delivered':
      case 'receipt.read': {
        const kind = e.type === 'receipt.read' ? 'read' : 'delivered';
        if (d.user_id === this.me?.user_id) {
          const chat = this.chats.get(e.chat_id);
          if (chat && kind === 'read') {
            chat.last_read_seq = Math.max(chat.last_read_seq ?? 0, d.up_to_seq);
            chat.unread_count = Math.max(0, (chat.last_message?.seq ?? 0) - chat.last_read_seq);
          }
        } else {
          const r = this.receiptsOf(e.chat_id);
          r[kind][d.user_id] = Math.max(r[kind][d.user_id] ?? 0, d.up_to_seq);
          if (kind === 'read') r.delivered[d.user_id] = Math.max(r.delivered[d.user_id] ?? 0, d.up_to_seq);
        }
        break;
      }
      case 'chat.created':
      case 'chat.updated':
      case 'chat.member_added':
      case 'chat.member_removed': {
        if (!d.member_ids.includes(this.me?.user_id)) {
          this.chats.delete(d.chat_id);
          if (this.openChatId === d.chat_id) this.openChatId = null;
        } else {
          const old = this.chats.get(d.chat_id);
          this.chats.set(d.chat_id, { ...old, ...d, last_message: d.last_message ?? old?.last_message ?? null });
          const fresh = d.member_ids.filter((id) => !this.presence.has(id));
          Promise.all([this.loadUsers(d.member_ids), fresh.length ? this.refreshPresence(fresh) : null]).then(
            () => this.changed(),
            () => {}
          );
        }
        break;
      }
      default:
        break;
    }
    this.changed();
  }

  receiptsOf(chatId) {
    if (!this.receipts.has(chatId)) this.receipts.set(chatId, { delivered: {}, read: {} });
    return this.receipts.get(chatId);
  }

  onNewMessage(chatId, m) {
    const mine = m.sender_id === this.me?.user_id;
    const list = this.pending.get(chatId);
    if (mine && list) this.pending.set(chatId, list.filter((p) => p.client_msg_id !== m.client_msg_id));
    let chat = this.chats.get(chatId);
    if (!chat) {
      api.getChat(this.client, chatId).then((c) => {
        this.chats.set(chatId, c);
        this.changed();
      }, () => {});
      return;
    }
    if (!chat.last_message || m.seq >= chat.last_message.seq) chat.last_message = m;
    chat.updated_at = m.sent_at;
    const typing = this.typing.get(chatId);
    if (typing) typing.delete(m.sender_id);
    if (mine) {
      chat.last_read_seq = Math.max(chat.last_read_seq ?? 0, m.seq);
    } else {
      chat.unread_count = Math.max(0, m.seq - (chat.last_read_seq ?? 0));
      if (chatId === this.openChatId && !hidden()) this.markRead(chatId);
      else api.markDelivered(this.client, chatId, m.seq).catch(() => {});
      this.loadUsers([m.sender_id]).catch(() => {});
    }
  }

  onTyping(e) {
    if (e.data.user_id === this.me?.user_id) return;
    if (!this.typing.has(e.chat_id)) this.typing.set(e.chat_id, new Map());
    this.typing.get(e.chat_id).set(e.data.user_id, Date.now() + TYPING_MS);
    this.changed();
    setTimeout(() => this.changed(), TYPING_MS + 50);
  }

  typingIn(chatId) {
    const m = this.typing.get(chatId);
    if (!m) return [];
    const now = Date.now();
    return [...m.entries()].filter(([, until]) => until > now).map(([id]) => this.users.get(id)?.display_name ?? 'someone');
  }

  /** Ticks of my message: 1 = sent, 2 = delivered to every other member, 3 = read by all. */
  ticks(chat, m) {
    const others = chat.member_ids.filter((id) => id !== this.me?.user_id);
    const r = this.receipts.get(chat.chat_id) || { delivered: {}, read: {} };
    if (others.length && others.every((id) => (r.read[id] ?? 0) >= m.seq)) return 3;
    if (others.length && others.every((id) => (r.delivered[id] ?? 0) >= m.seq)) return 2;
    return 1;
  }

  async mediaUrls(mediaId) {
    const known = this.media.get(mediaId);
    if (known && known.fetched + (known.expires_in - 60) * 1000 > Date.now()) return known;
    const d = await api.getMedia(this.client, mediaId);
    const entry = { ...d, fetched: Date.now() };
    this.media.set(mediaId, entry);
    return entry;
  }
}

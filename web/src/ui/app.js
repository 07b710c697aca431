import { h, render } from 'preact';
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import * as api from '../lib/api.js';
import { pushAvailable, pushEnabled, enablePush, disablePush } from '../push.js';

const html = htm.bind(h);
const REACTIONS = ['👍', '❤️', '😂'];

function useStore(store) {
  const [, bump] = useReducer((n) => n + 1, 0);
  useEffect(() => store.subscribe(bump), [store]);
}

const time = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '');

function lastSeen(p) {
  if (!p) return '';
  if (p.online) return 'online';
  if (!p.last_seen) return 'offline';
  const d = new Date(p.last_seen > 1e12 ? p.last_seen : p.last_seen * 1000);
  return `last seen ${d.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}`;
}

function AuthScreen({ client }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = async (register) => {
    setBusy(true);
    setError(null);
    try {
      if (register) await client.register({ username, password, displayName });
      await client.login({ username, password });
    } catch (e) {
      setError(e.message || String(e));
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="auth" onSubmit=${(e) => (e.preventDefault(), run(false))}>
    <h1>Messenger</h1>
    <input data-testid="username" placeholder="username" autocomplete="username" value=${username} onInput=${(e) => setUsername(e.target.value)} />
    <input data-testid="password" type="password" placeholder="password (8+ characters)" autocomplete="current-password" value=${password} onInput=${(e) => setPassword(e.target.value)} />
    <input data-testid="display-name" placeholder="display name (to register)" value=${displayName} onInput=${(e) => setDisplayName(e.target.value)} />
    <div class="row">
      <button data-testid="login" type="submit" disabled=${busy}>Log in</button>
      <button data-testid="register" type="button" disabled=${busy} onClick=${() => run(true)}>Register</button>
    </div>
    ${error && html`<p class="error" data-testid="auth-error">${error}</p>`}
  </form>`;
}

/** The Web Push opt-in: shown only when the browser can and the server has Web Push enabled. */
function PushToggle({ client }) {
  const [available, setAvailable] = useState(false);
  const [on, setOn] = useState(() => pushEnabled(client));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    pushAvailable(client).then((a) => live && setAvailable(a), () => {});
    return () => (live = false);
  }, [client]);
  if (!available) return null;
  const toggle = async () => {
    setBusy(true);
    setError(null);
    try {
      if (on) await disablePush(client);
      else await enablePush(client);
      setOn(!on);
    } catch (e) {
      setError(e?.message || String(e));
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="push">
    <button data-testid="push-toggle" data-on=${on ? 'true' : 'false'} disabled=${busy} title=${on ? 'Stop notifications of new messages on this browser' : 'Be notified of new messages while the app is closed'} onClick=${toggle}>
      ${busy ? '…' : on ? '🔕 Turn off notifications' : '🔔 Get notifications'}
    </button>
    ${error && html`<span class="error" data-testid="push-error">${error}</span>`}
  </div>`;
}

function Sidebar({ store, client }) {
  const [query, setQuery] = useState('');
  const [results, setResults] = useState([]);
  const [picked, setPicked] = useState([]);
  const [title, setTitle] = useState('');
  useEffect(() => {
    if (!query.trim()) return setResults([]);
    const t = setTimeout(() => {
      api.searchUsers(client, query.trim()).then(
        (r) => setResults(r.users.filter((u) => u.user_id !== store.me?.user_id)),
        () => setResults([])
      );
    }, 200);
    return () => clearTimeout(t);
  }, [query]);
  const direct = async (u) => {
    try {
      const chat = await api.createDirect(client, u.user_id);
      store.users.set(u.user_id, u);
      await store.addChat(chat);
      setQuery('');
      await store.openChat(chat.chat_id);
    } catch (e) {
      store.fail(e);
    }
  };
  const group = async () => {
    try {
      const chat = await api.createGroup(client, title.trim(), picked.map((u) => u.user_id));
      for (const u of picked) store.users.set(u.user_id, u);
      await store.addChat(chat);
      setPicked([]);
      setTitle('');
      setQuery('');
      await store.openChat(chat.chat_id);
    } catch (e) {
      store.fail(e);
    }
  };
  const toggle = (u) => setPicked(picked.some((p) => p.user_id === u.user_id) ? picked.filter((p) => p.user_id !== u.user_id) : [...picked, u]);
  return html`<aside class="sidebar">
    <header>
      <div>
        <strong data-testid="me">${store.me?.display_name ?? ''}</strong>
        <span class=${`conn ${store.connection}`} data-testid="connection">${store.connection}</span>
      </div>
      <div class="row">
        <button data-testid="logout" onClick=${() => client.logout().catch(() => {})}>Log out</button>
      </div>
    </header>
    <${PushToggle} key=${store.me?.user_id} client=${client} />
    <input class="search" data-testid="search" placeholder="Search users…" value=${query} onInput=${(e) => setQuery(e.target.value)} />
    ${results.length > 0 &&
    html`<ul class="results">
      ${results.map(
        (u) => html`<li key=${u.user_id}>
          <label><input type="checkbox" checked=${picked.some((p) => p.user_id === u.user_id)} onChange=${() => toggle(u)} /> ${u.display_name} <small>@${u.username}</small></label>
          <button data-testid=${`chat-with-${u.username}`} onClick=${() => direct(u)}>Chat</button>
        </li>`
      )}
    </ul>`}
    ${picked.length > 0 &&
    html`<div class="group row">
      <input data-testid="group-title" placeholder="group title" value=${title} onInput=${(e) => setTitle(e.target.value)} />
      <button data-testid="create-group" disabled=${!title.trim()} onClick=${group}>Create group (${picked.length + 1})</button>
    </div>`}
    <ul class="chats" data-testid="chat-list">
      ${store.sortedChats().map((c) => {
        const other = store.otherMember(c);
        const online = other && store.presence.get(other)?.online;
        const last = c.last_message;
        return html`<li key=${c.chat_id} data-testid="chat-item" class=${c.chat_id === store.openChatId ? 'open' : ''} onClick=${() => store.openChat(c.chat_id)}>
          <div class="title">${online ? html`<span class="dot" title="online"></span>` : ''}${store.chatTitle(c)}</div>
          <div class="last">${last ? (last.deleted ? 'message deleted' : last.text || (last.media?.length ? '📷 photo' : '')) : 'no messages yet'}</div>
          ${c.unread_count > 0 && c.chat_id !== store.openChatId ? html`<span class="badge" data-testid="unread">${c.unread_count}</span>` : ''}
        </li>`;
      })}
    </ul>
  </aside>`;
}

function MediaThumb({ store, media }) {
  const [d, setD] = useState(null);
  useEffect(() => {
    store.mediaUrls(media.media_id).then(setD, () => {});
  }, [media.media_id]);
  if (!d) return html`<div class="thumb loading">…</div>`;
  if (d.thumbnail_url)
    return html`<a href=${d.url} target="_blank" rel="noopener"><img class="thumb" data-testid="thumb" src=${d.thumbnail_url} alt=${d.filename || 'image'} /></a>`;
  return html`<a href=${d.url} target="_blank" rel="noopener">📎 ${d.filename || media.content_type}</a>`;
}

function Message({ store, client, chat, m }) {
  const mine = m.sender_id === store.me?.user_id;
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(m.text || '');
  const sender = store.users.get(m.sender_id);
  const ticks = mine ? store.ticks(chat, m) : 0;
  const act = (p) => p.catch((e) => store.fail(e));
  return html`<div class=${`msg ${mine ? 'mine' : ''}`} data-testid="message" data-seq=${m.seq}>
    ${chat.type === 'group' && !mine && html`<div class="sender">${sender?.display_name ?? ''}</div>`}
    ${m.deleted
      ? html`<div class="text deleted">message deleted</div>`
      : editing
        ? html`<form onSubmit=${(e) => (e.preventDefault(), setEditing(false), act(api.editMessage(client, chat.chat_id, m.message_id, text)))}>
            <input data-testid="edit-input" value=${text} onInput=${(e) => setText(e.target.value)} />
          </form>`
        : html`${(m.media || []).map((x) => html`<${MediaThumb} key=${x.media_id} store=${store} media=${x} />`)}
            ${m.text && html`<div class="text" data-testid="message-text">${m.text}</div>`}`}
    <div class="meta">
      ${Object.entries(m.reactions || {}).map(([emoji, users]) => html`<span class="reaction" data-testid="reaction">${emoji}${users.length > 1 ? users.length : ''}</span>`)}
      ${m.edited_at && !m.deleted ? html`<span class="edited">edited</span>` : ''}
      <span class="time">${time(m.sent_at)}</span>
      ${mine && html`<span class=${`ticks t${ticks}`} data-testid="ticks" data-ticks=${ticks} title=${['', 'sent', 'delivered', 'read'][ticks]}>${ticks === 1 ? '✓' : '✓✓'}</span>`}
    </div>
    ${!m.deleted &&
    html`<div class="actions">
      ${REACTIONS.map((r) => html`<button title="react" onClick=${() => act(api.react(client, chat.chat_id, m.message_id, m.reactions?.[r]?.includes(store.me?.user_id) ? null : r))}>${r}</button>`)}
      ${mine && html`<button data-testid="edit" onClick=${() => (setText(m.text || ''), setEditing(true))}>edit</button>
        <button data-testid="delete" onClick=${() => act(api.deleteMessage(client, chat.chat_id, m.message_id))}>delete</button>`}
    </div>`}
  </div>`;
}

function Pending({ store, chatId, p }) {
  return html`<div class="msg mine pending" data-testid="pending">
    ${p.media && html`<div class="thumb loading">📷</div>`}
    ${p.text && html`<div class="text">${p.text}</div>`}
    <div class="meta">
      ${p.status === 'failed'
        ? html`<span class="error">not sent</span> <button data-testid="retry" onClick=${() => store.trySend(chatId, p)}>retry</button>`
        : html`<span class="ticks t0" title="sending">🕓</span>`}
    </div>
  </div>`;
}

function ChatPane({ store, client }) {
  const chat = store.chats.get(store.openChatId);
  const list = useRef(null);
  const lastTyping = useRef(0);
  const [text, setText] = useState('');
  const [uploading, setUploading] = useState(false);
  const tl = chat ? store.timeline(chat.chat_id) : { stored: [], pending: [] };
  const firstSeq = tl.stored[0]?.seq;
  const lastKey = `${tl.stored.at(-1)?.seq}/${tl.pending.length}`;
  const prev = useRef({ firstSeq: null, height: 0, chatId: null });

  useLayoutEffect(() => {
    const el = list.current;
    if (!el) return;
    const p = prev.current;
    if (p.chatId === store.openChatId && p.firstSeq != null && firstSeq < p.firstSeq) {
      el.scrollTop += el.scrollHeight - p.height; // older page added above: keep the view still
    } else if (p.chatId !== store.openChatId || el.scrollHeight - el.scrollTop - el.clientHeight < 200 || p.firstSeq == null) {
      el.scrollTop = el.scrollHeight;
    }
    prev.current = { firstSeq, height: el.scrollHeight, chatId: store.openChatId };
    // a first page that does not fill the view cannot be scrolled: load more right away
    if (chat && tl.hasMore && !tl.loading && tl.stored.length && el.scrollHeight <= el.clientHeight) store.loadOlder(chat.chat_id);
  }, [store.openChatId, firstSeq, lastKey, tl.loading]);

  useEffect(() => {
    if (chat) store.markRead(chat.chat_id);
  });

  if (!chat) return html`<main class="pane empty">Search for someone to start a chat.</main>`;
  const other = store.otherMember(chat);
  const typing = store.typingIn(chat.chat_id);
  const status = store.connection !== 'online'
    ? 'waiting for network…'
    : typing.length
    ? `${typing.join(', ')} typing…`
    : other
      ? lastSeen(store.presence.get(other))
      : `${chat.member_ids.length} members`;

  const onScroll = (e) => {
    if (e.target.scrollTop < 60) store.loadOlder(chat.chat_id);
  };
  const onInput = (e) => {
    setText(e.target.value);
    if (Date.now() - lastTyping.current > 3000) {
      lastTyping.current = Date.now();
      api.typing(client, chat.chat_id).catch(() => {});
    }
  };
  const send = (e) => {
    e.preventDefault();
    const t = text.trim();
    if (!t) return;
    setText('');
    store.send(chat.chat_id, { text: t });
  };
  const attach = async (e) => {
    const file = e.target.files?.[0];
    e.target.value = '';
    if (!file) return;
    setUploading(true);
    try {
      const d = await api.uploadMedia(client, file);
      store.media.set(d.media_id, { ...d, fetched: Date.now() });
      await store.send(chat.chat_id, { text: text.trim() || null, mediaIds: [d.media_id], media: d });
      setText('');
    } catch (err) {
      store.fail(err);
    } finally {
      setUploading(false);
    }
  };

  return html`<main class="pane">
    <header>
      <strong data-testid="chat-title">${store.chatTitle(chat)}</strong>
      <span class="status" data-testid="chat-status">${status}</span>
    </header>
    <div class="messages" ref=${list} onScroll=${onScroll} data-testid="messages">
      ${tl.loading && html`<div class="loading">loading…</div>`}
      ${!tl.hasMore && html`<div class="start">start of the conversation</div>`}
      ${tl.stored.map((m) => html`<${Message} key=${m.seq} store=${store} client=${client} chat=${chat} m=${m} />`)}
      ${tl.pending.map((p) => html`<${Pending} key=${p.client_msg_id} store=${store} chatId=${chat.chat_id} p=${p} />`)}
    </div>
    <form class="composer" onSubmit=${send}>
      <label class="attach" title="attach an image">📎<input data-testid="attach" type="file" accept="image/*" onChange=${attach} hidden /></label>
      <input data-testid="composer" placeholder=${uploading ? 'uploading…' : 'Message'} value=${text} onInput=${onInput} />
      <button data-testid="send" type="submit">Send</button>
    </form>
  </main>`;
}

function App({ store, client }) {
  useStore(store);
  if (!client.tokens || store.connection === 'signed_out') return html`<${AuthScreen} client=${client} />`;
  return html`<div class="app">
    <${Sidebar} store=${store} client=${client} />
    <${ChatPane} store=${store} client=${client} />
    ${store.error && html`<div class="toast" onClick=${() => ((store.error = null), store.changed())}>${store.error}</div>`}
  </div>`;
}

export function mount(el, { store, client }) {
  render(html`<${App} store=${store} client=${client} />`, el);
}

/** A fake messenger server behind the transport interface of src/lib (no network). */
import { MessengerError } from '../src/lib/errors.js';

export function fakeServer({ expiresIn = 900 } = {}) {
  const s = {
    down: false,
    updates: [], // durable updates of the one user
    conns: [],
    calls: [],
    tickets: new Set(),
    refreshTokens: new Set(),
    n: 0,
    expiresIn,
    userId: 'u1',
  };
  const issue = () => {
    s.n += 1;
    const t = { user_id: s.userId, device_id: 'd1', access_token: `a${s.n}`, refresh_token: `r${s.n}`, expires_in: s.expiresIn };
    s.tickets.add(t.access_token);
    s.refreshTokens.add(t.refresh_token);
    return t;
  };
  const procedures = {
    'messenger.auth.register': () => ({ user_id: s.userId }),
    'messenger.auth.login': () => issue(),
    'messenger.auth.refresh': ({ refresh_token }) => {
      if (!s.refreshTokens.delete(refresh_token)) throw new MessengerError('messenger.error.unauthenticated', 'spent');
      return issue();
    },
    'messenger.auth.logout': () => ({}),
    'messenger.sync.get_updates': ({ since_update_id, limit }) => {
      const newest = s.updates.length ? s.updates[s.updates.length - 1].update_id : 0;
      const later = s.updates.filter((u) => u.update_id > since_update_id);
      const page = later.slice(0, limit);
      return {
        updates: page,
        last_update_id: page.length ? page[page.length - 1].update_id : newest,
        has_more: later.length > page.length,
      };
    },
  };
  s.connect = async ({ authmethods, ticket }) => {
    if (s.down) throw new MessengerError('offline', 'unreachable');
    if (authmethods.includes('ticket') && !s.tickets.has(ticket))
      throw new MessengerError('messenger.error.unauthenticated', 'bad token');
    const conn = {
      authmethods,
      open: true,
      subs: [],
      closeCb: null,
      call: async (p, kw) => {
        s.calls.push([p, kw]);
        if (!conn.open) throw new MessengerError('offline', 'closed');
        const f = procedures[p];
        if (!f) throw new MessengerError('wamp.error.no_such_procedure', p);
        return f(kw);
      },
      subscribe: async (topic, h) => {
        conn.subs.push({ topic, h });
      },
      close: () => {
        conn.open = false;
      },
      onClose: (cb) => {
        conn.closeCb = cb;
      },
      // test helpers
      drop: (reason = 'lost') => {
        conn.open = false;
        conn.closeCb?.(reason, '');
      },
      publish: (ev) => conn.subs.forEach((x) => x.h(ev)),
    };
    s.conns.push(conn);
    return conn;
  };
  s.userConn = () => [...s.conns].reverse().find((c) => c.authmethods.includes('ticket') && c.open);
  s.add = (type, data = {}) => {
    const u = { type, update_id: s.updates.length + 1, chat_id: 'c1', at: 0, data };
    s.updates.push(u);
    return u;
  };
  return s;
}

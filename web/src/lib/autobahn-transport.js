/**
 * The default transport: one autobahn-js connection per session, no automatic retries (the
 * client decides when and how to reconnect). A connection is
 * `{details, call(procedure, kwargs), subscribe(topic, handler), close(), onClose(cb)}`.
 * Calls and subscriptions still pending when the connection closes are rejected (`offline`), and
 * a join that takes longer than `joinTimeoutMs` fails, so that the client never waits forever.
 */
import autobahn from 'autobahn-browser';
import { MessengerError } from './errors.js';

function unwrap(result) {
  if (result instanceof autobahn.Result) {
    return result.kwargs && Object.keys(result.kwargs).length ? result.kwargs : result.args?.[0];
  }
  return result;
}

function toError(e) {
  if (e instanceof MessengerError) return e;
  if (e && e.error) return new MessengerError(e.error, e.args?.[0], e.kwargs);
  return new MessengerError('offline', String(e?.message || e));
}

export function autobahnConnect({ url, realm = 'messenger', authmethods, ticket, joinTimeoutMs = 15000 }) {
  return new Promise((resolve, reject) => {
    const connection = new autobahn.Connection({
      url,
      realm,
      authmethods,
      onchallenge: () => ticket || '',
      max_retries: 0,
      retry_if_unreachable: false,
    });
    let joined = false;
    let closed = false;
    let onClose = null;
    const pending = new Set(); // rejecters of what is in flight
    const track = (promise) =>
      new Promise((res, rej) => {
        if (closed) return rej(new MessengerError('offline', 'connection closed'));
        pending.add(rej);
        promise.then(
          (v) => (pending.delete(rej), res(v)),
          (e) => (pending.delete(rej), rej(toError(e)))
        );
      });
    const shut = (why) => {
      closed = true;
      for (const rej of pending) rej(new MessengerError('offline', why));
      pending.clear();
    };
    const timer = setTimeout(() => {
      if (joined || closed) return;
      shut('join timed out');
      reject(new MessengerError('offline', 'join timed out'));
      try {
        connection.close();
      } catch {
        /* not open */
      }
    }, joinTimeoutMs);
    connection.onopen = (session, details) => {
      clearTimeout(timer);
      if (closed) return;
      joined = true;
      resolve({
        details,
        call: (procedure, kwargs = {}) => track(session.call(procedure, [], kwargs)).then(unwrap),
        subscribe: (topic, handler) =>
          track(session.subscribe(topic, (args, kwargs) => handler(kwargs && Object.keys(kwargs).length ? kwargs : args?.[0]))),
        close: () => {
          if (closed) return;
          shut('closed by the client');
          try {
            connection.close();
          } catch {
            /* already closed */
          }
        },
        onClose: (cb) => {
          onClose = cb;
        },
      });
    };
    connection.onclose = (reason, details) => {
      clearTimeout(timer);
      const why = details?.reason || reason;
      const wasClosed = closed;
      shut(String(why));
      if (!joined) reject(new MessengerError(why, details?.message || reason));
      else if (!wasClosed && onClose) onClose(why, details?.message);
      return true; // stop autobahn's own retries
    };
    connection.open();
  });
}

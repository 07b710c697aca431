import { describe, expect, it } from 'vitest';
import { UpdateStream, NEWEST } from '../src/lib/stream.js';

const ev = (id, type = 'message.new') => ({ type, update_id: id, chat_id: 'c', at: 0, data: {} });

function setup(log, { last = 0 } = {}) {
  const applied = [];
  const fetches = [];
  const stream = new UpdateStream({
    lastUpdateId: last,
    fetch: async (since) => {
      fetches.push(since);
      const newest = log.length ? log[log.length - 1].update_id : 0;
      const later = log.filter((u) => u.update_id > since).slice(0, 2); // pages of 2
      return {
        updates: later,
        last_update_id: later.length ? later[later.length - 1].update_id : newest,
        has_more: log.filter((u) => u.update_id > since).length > later.length,
      };
    },
    apply: (e) => applied.push(e.update_id),
  });
  return { stream, applied, fetches };
}

describe('UpdateStream', () => {
  it('applies consecutive updates in order and ignores ids it holds', () => {
    const { stream, applied, fetches } = setup([]);
    stream.push(ev(1));
    stream.push(ev(2));
    stream.push(ev(2));
    stream.push(ev(1));
    stream.push(ev(3));
    expect(applied).toEqual([1, 2, 3]);
    expect(fetches).toEqual([]);
    expect(stream.lastUpdateId).toBe(3);
  });

  it('a gap starts a sync that fetches the missing updates page by page, then replays held ones', async () => {
    const log = [1, 2, 3, 4, 5, 6, 7].map((i) => ev(i));
    const { stream, applied, fetches } = setup(log, { last: 1 });
    stream.push(ev(6)); // 2..5 missed
    stream.push(ev(7)); // arrives while syncing: held
    await stream.syncing;
    expect(applied).toEqual([2, 3, 4, 5, 6, 7]);
    expect(fetches).toEqual([1, 3, 5]); // pages of two, until has_more is false
    expect(stream.lastUpdateId).toBe(7);
    expect(stream.gaps).toBe(1);
  });

  it('events that arrive during a sync are applied once, after the sync, in id order', async () => {
    const log = [1, 2, 3].map((i) => ev(i));
    const { stream, applied } = setup(log);
    const done = stream.sync();
    stream.push(ev(4));
    stream.push(ev(3));
    log.push(ev(4));
    await done;
    expect(applied).toEqual([1, 2, 3, 4]);
  });

  it('ephemeral events (update_id null) pass at once, even during a sync', async () => {
    const seen = [];
    const stream = new UpdateStream({
      fetch: async () => ({ updates: [], last_update_id: 0, has_more: false }),
      apply: () => {},
      ephemeral: (e) => seen.push(e.type),
    });
    const p = stream.sync();
    stream.push({ type: 'typing', update_id: null, chat_id: 'c', data: {} });
    expect(seen).toEqual(['typing']);
    await p;
  });

  it('startAtNewest begins at the server newest id without replaying the log', async () => {
    const log = [1, 2, 3, 4, 5].map((i) => ev(i));
    const { stream, applied, fetches } = setup(log);
    const p = stream.startAtNewest();
    stream.push(ev(6)); // live during the start
    log.push(ev(6));
    await p;
    expect(fetches[0]).toBe(NEWEST);
    expect(stream.lastUpdateId).toBe(6);
    expect(applied).toEqual([6]);
  });

  it('a failed sync keeps the held events and a later sync resumes from the last applied id', async () => {
    const log = [1, 2, 3].map((i) => ev(i));
    let fail = true;
    const applied = [];
    const stream = new UpdateStream({
      fetch: async (since) => {
        if (fail) throw new Error('offline');
        return { updates: log.filter((u) => u.update_id > since), last_update_id: 3, has_more: false };
      },
      apply: (e) => applied.push(e.update_id),
    });
    stream.push(ev(3)); // gap: 1, 2 missing; the sync fails
    await stream.syncing?.catch(() => {});
    expect(applied).toEqual([]);
    fail = false;
    await stream.sync();
    expect(applied).toEqual([1, 2, 3]);
  });

  it('follows the server when its newest id is below ours (data lost) and says so', async () => {
    const resets = [];
    const stream = new UpdateStream({
      lastUpdateId: 10,
      fetch: async () => ({ updates: [], last_update_id: 4, has_more: false }),
      apply: () => {},
      onReset: (r) => resets.push(r),
    });
    await stream.sync();
    expect(resets).toEqual([{ from: 10, to: 4 }]);
    expect(stream.lastUpdateId).toBe(4);
  });
});

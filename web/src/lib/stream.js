/**
 * Gap detection on the per-user update stream (docs/PROTOCOL.md, "The event stream and sync").
 *
 * Durable updates carry consecutive ids 1, 2, 3, ... per user. `push()` takes every event that
 * arrives live: the next id is applied, ids already held are ignored, an id beyond the next one is
 * a gap and starts a sync (`fetch(since)` = `messenger.sync.get_updates`). Events that arrive while
 * a sync runs are held and replayed after it, so updates are applied exactly once and in order.
 * Ephemeral events (`update_id: null`: typing, presence) are applied at once.
 */
/** `since_update_id` at or beyond the newest: the server answers its newest id. */
export const NEWEST = Number.MAX_SAFE_INTEGER;

export class UpdateStream {
  /**
   * @param {object} o
   * @param {(since: number) => Promise<{updates: any[], last_update_id: number, has_more: boolean}>} o.fetch
   * @param {(event: any) => void} o.apply durable updates, in order, each once
   * @param {(event: any) => void} [o.ephemeral] typing, presence
   * @param {(info: {from: number, to: number}) => void} [o.onReset] the server's newest id is below ours
   * @param {number} [o.lastUpdateId]
   */
  constructor({ fetch, apply, ephemeral = () => {}, onReset = () => {}, lastUpdateId = 0 }) {
    this.fetch = fetch;
    this.apply = apply;
    this.ephemeral = ephemeral;
    this.onReset = onReset;
    this.lastUpdateId = lastUpdateId;
    this.held = [];
    this.syncing = null; // the running sync's promise
    this.gaps = 0;
  }

  /** A live event. */
  push(event) {
    if (event == null || typeof event !== 'object') return;
    if (event.update_id == null) {
      this.ephemeral(event);
      return;
    }
    if (this.syncing) {
      this.held.push(event);
      return;
    }
    this._take(event);
  }

  _take(event) {
    const id = event.update_id;
    if (id <= this.lastUpdateId) return; // already held (e.g. live after a sync)
    if (id === this.lastUpdateId + 1) {
      this.lastUpdateId = id;
      this.apply(event);
      return;
    }
    this.gaps += 1;
    this.held.push(event);
    this.sync().catch(() => {}); // a failed sync is retried by the next gap or reconnect
  }

  /**
   * A fresh start: begin at the server's newest id (the app loads its state with `chat.list`
   * rather than replaying the whole log). Events that arrive meanwhile are held and replayed.
   */
  startAtNewest() {
    this.syncing = (async () => {
      const page = await this.fetch(NEWEST);
      this.lastUpdateId = Math.max(this.lastUpdateId, page.last_update_id || 0);
      await this._sync();
    })().finally(() => {
      this.syncing = null;
    });
    return this.syncing;
  }

  /** Fetch every update after the last one held (single flight); resolves when caught up. */
  sync() {
    if (!this.syncing) {
      this.syncing = this._sync().finally(() => {
        this.syncing = null;
      });
    }
    return this.syncing;
  }

  async _sync() {
    for (let round = 0; ; round++) {
      const before = this.lastUpdateId;
      await this._fetchAll();
      // replay what arrived meanwhile, in id order
      const held = this.held.sort((a, b) => a.update_id - b.update_id);
      this.held = [];
      let i = 0;
      for (; i < held.length; i++) {
        const e = held[i];
        if (e.update_id <= this.lastUpdateId) continue;
        if (e.update_id !== this.lastUpdateId + 1) break;
        this.lastUpdateId = e.update_id;
        this.apply(e);
      }
      if (i === held.length) return;
      // still a gap: sync again; if the server had nothing more twice, accept the hole
      if (this.lastUpdateId === before && round >= 1) {
        for (; i < held.length; i++) {
          if (held[i].update_id > this.lastUpdateId) {
            this.lastUpdateId = held[i].update_id;
            this.apply(held[i]);
          }
        }
        return;
      }
      this.held = held.slice(i);
    }
  }

  async _fetchAll() {
    for (;;) {
      const since = this.lastUpdateId;
      const page = await this.fetch(since);
      const updates = page.updates || [];
      for (const u of updates) {
        if (u.update_id > this.lastUpdateId) {
          this.lastUpdateId = u.update_id;
          this.apply(u);
        }
      }
      if (updates.length === 0 && page.last_update_id < since) {
        // the server's newest id is below ours: it lost data; follow it (the app reloads)
        this.lastUpdateId = page.last_update_id;
        this.onReset({ from: since, to: page.last_update_id });
      }
      if (!page.has_more || updates.length === 0) return;
    }
  }
}

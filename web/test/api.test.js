import { describe, expect, it } from 'vitest';
import * as api from '../src/lib/api.js';

describe('api', () => {
  it('uploadMedia: create_upload with type, size and a safe name, PUT with the given headers, then complete', async () => {
    const calls = [];
    const client = {
      call: async (p, kw) => {
        calls.push([p, kw]);
        if (p === 'messenger.media.create_upload')
          return { media_id: 'm1', upload_url: 'http://h/media/up?sig=1', upload_method: 'PUT', upload_headers: { 'Content-Type': 'image/png' }, expires_in: 600 };
        return { media_id: 'm1', url: 'http://h/media/m1', thumbnail_url: 'http://h/media/m1/t' };
      },
    };
    const puts = [];
    const fetchImpl = async (url, init) => (puts.push([url, init]), { ok: true, status: 200 });
    const file = new Blob([new Uint8Array(10)], { type: 'image/png' });
    file.name = 'a/b.png';
    const d = await api.uploadMedia(client, file, { fetchImpl });
    expect(calls[0]).toEqual(['messenger.media.create_upload', { content_type: 'image/png', size: 10, filename: 'a_b.png' }]);
    expect(puts[0][0]).toBe('http://h/media/up?sig=1');
    expect(puts[0][1].method).toBe('PUT');
    expect(puts[0][1].headers).toEqual({ 'Content-Type': 'image/png' });
    expect(calls[1]).toEqual(['messenger.media.complete', { media_id: 'm1' }]);
    expect(d.thumbnail_url).toBe('http://h/media/m1/t');
  });

  it('uploadMedia fails on a refused PUT and does not complete', async () => {
    const calls = [];
    const client = { call: async (p) => (calls.push(p), { media_id: 'm1', upload_url: 'u', upload_headers: {} }) };
    const file = new Blob([new Uint8Array(3)], { type: 'image/png' });
    await expect(api.uploadMedia(client, file, { fetchImpl: async () => ({ ok: false, status: 403 }) })).rejects.toThrow('403');
    expect(calls).toEqual(['messenger.media.create_upload']);
  });

  it('sendMessage sends only what is given; client_msg_ids are valid and unique', async () => {
    const calls = [];
    const client = { call: async (p, kw) => calls.push([p, kw]) };
    await api.sendMessage(client, { chatId: 'c', clientMsgId: 'x', text: 'hi' });
    await api.sendMessage(client, { chatId: 'c', clientMsgId: 'y', mediaIds: ['m'] });
    expect(calls).toEqual([
      ['messenger.message.send', { chat_id: 'c', client_msg_id: 'x', text: 'hi' }],
      ['messenger.message.send', { chat_id: 'c', client_msg_id: 'y', media_ids: ['m'] }],
    ]);
    const a = api.newClientMsgId();
    expect(a).toMatch(/^[A-Za-z0-9_.:-]{1,64}$/);
    expect(api.newClientMsgId()).not.toBe(a);
  });
});

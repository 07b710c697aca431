import { describe, expect, it } from 'vitest';
import { backoffDelay, refreshDelayMs } from '../src/lib/timing.js';

describe('backoffDelay', () => {
  it('doubles from 1 s up to 30 s, jittered within 50-100 %', () => {
    const top = (a) => backoffDelay(a, { random: () => 1 });
    expect([0, 1, 2, 3, 4, 5, 6, 10].map(top)).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(backoffDelay(0, { random: () => 0 })).toBe(500);
    expect(backoffDelay(5, { random: () => 0 })).toBe(15000);
  });
});

describe('refreshDelayMs', () => {
  it('refreshes at 80 % of the life, at least a minute before expiry, never sooner than 1 s', () => {
    expect(refreshDelayMs(900)).toBe(720000); // 15 min token: after 12 min
    expect(refreshDelayMs(120)).toBe(60000); // 2 min token: a minute before expiry
    expect(refreshDelayMs(30)).toBe(1000);
    expect(refreshDelayMs(0)).toBe(1000);
  });
});

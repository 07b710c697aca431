/** Reconnect delays and token refresh scheduling: pure functions, unit-tested. */

/**
 * Delay before reconnect attempt `attempt` (0-based): 1 s, 2 s, 4 s, ... up to 30 s, with jitter
 * (50-100 % of the step), so that clients of a dead server do not come back in the same second.
 */
export function backoffDelay(attempt, { baseMs = 1000, maxMs = 30000, random = Math.random } = {}) {
  const step = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
  return Math.round(step * (0.5 + 0.5 * random()));
}

/**
 * When to refresh an access token that expires in `expiresInS` seconds: at 80 % of its life,
 * but at least `marginS` before it expires and never sooner than `minMs`.
 */
export function refreshDelayMs(expiresInS, { fraction = 0.8, marginS = 60, minMs = 1000 } = {}) {
  const life = expiresInS * 1000;
  const delay = Math.min(life * fraction, life - marginS * 1000);
  return Math.max(minMs, Math.round(delay));
}

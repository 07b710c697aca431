/** Errors of the messenger protocol: `code` is the `messenger.error.*` URI (or `offline`). */
export class MessengerError extends Error {
  constructor(code, message, kwargs = {}) {
    super(message || code);
    this.name = 'MessengerError';
    this.code = code;
    this.kwargs = kwargs || {};
  }
}

export const E = {
  unauthenticated: 'messenger.error.unauthenticated',
  unavailable: 'messenger.error.unavailable',
  rateLimited: 'messenger.error.rate_limited',
  offline: 'offline',
};

export const CLOSE = {
  signedOut: 'messenger.close.signed_out',
  draining: 'messenger.close.shard_draining',
};

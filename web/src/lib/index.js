// The protocol client, without a transport: pass `connect` (e.g. `autobahnConnect` from
// './autobahn-transport.js', the package's "./autobahn" export) to MessengerClient.
export { MessengerClient, memoryStorage, P } from './client.js';
export { UpdateStream, NEWEST } from './stream.js';
export { backoffDelay, refreshDelayMs } from './timing.js';
export { MessengerError, E, CLOSE } from './errors.js';
export * as api from './api.js';
export { WebPush, PushError, base64UrlToBytes } from './webpush.js';

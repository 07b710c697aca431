/** The app's one route: `#/chat/<id>` (a notification click opens it; see src/sw/handlers.js chatPath). */
export function chatIdOfHash(hash) {
  const m = /^#\/chat\/([^/?#]+)$/.exec(hash || '');
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

/** What the service worker posts to a window when a notification is clicked (src/sw/handlers.js OPEN_CHAT). */
export const OPEN_CHAT = 'messenger.open_chat';

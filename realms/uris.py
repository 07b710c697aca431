"""Every WAMP URI of the messenger, named once. Components import names from here."""

from __future__ import annotations

REALM = "messenger"

ROLE_GUEST = "guest"
ROLE_USER = "user"
ROLE_BACKEND = "backend"

# -- auth (guest or user) ------------------------------------------------------------------
AUTH_REGISTER = "messenger.auth.register"
AUTH_LOGIN = "messenger.auth.login"
AUTH_REFRESH = "messenger.auth.refresh"
AUTH_LOGOUT = "messenger.auth.logout"
AUTH_JWKS = "messenger.auth.jwks"

# -- users and contacts (user) -------------------------------------------------------------
USER_ME = "messenger.user.me"
USER_UPDATE_PROFILE = "messenger.user.update_profile"
USER_GET = "messenger.user.get"
USER_SEARCH = "messenger.user.search"
USER_BLOCK = "messenger.user.block"
USER_UNBLOCK = "messenger.user.unblock"
USER_LIST_BLOCKED = "messenger.user.list_blocked"
CONTACTS_ADD = "messenger.contacts.add"
CONTACTS_REMOVE = "messenger.contacts.remove"
CONTACTS_LIST = "messenger.contacts.list"

# -- internal (backend only) ---------------------------------------------------------------
INTERNAL_AUTHENTICATE = "messenger.internal.authenticate"
INTERNAL_AUTHORIZE = "messenger.internal.authorize"
INTERNAL_USER_BLOCKED = "messenger.internal.user.is_blocked"
EVENT_DEVICE_REVOKED = "messenger.internal.device_revoked"

# -- topics --------------------------------------------------------------------------------
USER_TOPIC_PREFIX = "messenger.user."


def user_topic(user_id: str) -> str:
    return USER_TOPIC_PREFIX + user_id


GUEST_PROCEDURES: frozenset[str] = frozenset({AUTH_REGISTER, AUTH_LOGIN, AUTH_REFRESH})

# Procedures a user session may call. The authorizer allows exactly these (plus the guest ones).
USER_PROCEDURES: frozenset[str] = GUEST_PROCEDURES | frozenset(
    {
        AUTH_LOGOUT,
        AUTH_JWKS,
        USER_ME,
        USER_UPDATE_PROFILE,
        USER_GET,
        USER_SEARCH,
        USER_BLOCK,
        USER_UNBLOCK,
        USER_LIST_BLOCKED,
        CONTACTS_ADD,
        CONTACTS_REMOVE,
        CONTACTS_LIST,
    }
)

ERROR_PREFIX = "messenger.error."

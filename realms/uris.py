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

# -- chats, messages, presence, sync (user) ---------------------------------------------------
CHAT_CREATE_DIRECT = "messenger.chat.create_direct"
CHAT_CREATE_GROUP = "messenger.chat.create_group"
CHAT_GET = "messenger.chat.get"
CHAT_LIST = "messenger.chat.list"
CHAT_ADD_MEMBERS = "messenger.chat.add_members"
CHAT_REMOVE_MEMBER = "messenger.chat.remove_member"
CHAT_LEAVE = "messenger.chat.leave"
CHAT_UPDATE = "messenger.chat.update"
CHAT_TYPING = "messenger.chat.typing"
MESSAGE_SEND = "messenger.message.send"
MESSAGE_HISTORY = "messenger.message.history"
MESSAGE_EDIT = "messenger.message.edit"
MESSAGE_DELETE = "messenger.message.delete"
MESSAGE_REACT = "messenger.message.react"
MESSAGE_MARK_DELIVERED = "messenger.message.mark_delivered"
MESSAGE_MARK_READ = "messenger.message.mark_read"
PRESENCE_GET = "messenger.presence.get"
SYNC_GET_UPDATES = "messenger.sync.get_updates"
CHAT_MUTE = "messenger.chat.mute"

# -- push notifications (user) --------------------------------------------------------------
PUSH_REGISTER = "messenger.push.register"
PUSH_UNREGISTER = "messenger.push.unregister"
PUSH_CONFIG = "messenger.push.config"

# -- media (user) --------------------------------------------------------------------------
MEDIA_CREATE_UPLOAD = "messenger.media.create_upload"
MEDIA_COMPLETE = "messenger.media.complete"
MEDIA_GET = "messenger.media.get"

# -- internal (backend only) ---------------------------------------------------------------
INTERNAL_AUTHENTICATE = "messenger.internal.authenticate"
INTERNAL_AUTHORIZE = "messenger.internal.authorize"
INTERNAL_USER_BLOCKED = "messenger.internal.user.is_blocked"
INTERNAL_USERS_EXISTING = "messenger.internal.user.existing"
INTERNAL_CHAT_UPDATES = "messenger.internal.chat.updates"
INTERNAL_CHAT_PARTNERS = "messenger.internal.chat.partners"
# media -> chat: may this user see what was posted in this chat? ``{member: bool}``
INTERNAL_CHAT_IS_MEMBER = "messenger.internal.chat.is_member"
# chat -> media: check that media are complete and the sender's, record where they were posted,
# answer their summaries ``{media: [...]}`` (stored in the message)
INTERNAL_MEDIA_ATTACH = "messenger.internal.media.attach"
INTERNAL_USERS_PROFILES = "messenger.internal.user.profiles"  # auth: {users: [profile]} for ids
# chat -> push after a message is stored (shared registration, roundrobin; fire and forget)
INTERNAL_PUSH_NOTIFY = "messenger.internal.push.notify"
# the same for several notices at once ``notices=[{...}, ...]`` (chat batches its hand-overs)
INTERNAL_PUSH_NOTIFY_MANY = "messenger.internal.push.notify_many"
# delivery (each shard's leader): which of these users have a joined session on any shard
INTERNAL_PRESENCE_ONLINE = "messenger.internal.presence.online"
# chat -> delivery in the embedded profile (shared registration, invoke "first": one active
# delivery per router, the others stand by, so every update is published once and in order);
# the distributed profile notifies through per-user Redis channels instead
INTERNAL_DELIVER = "messenger.internal.deliver"  # stored updates to publish
INTERNAL_DELIVER_EPHEMERAL = "messenger.internal.deliver_ephemeral"  # typing and the like
EVENT_DEVICE_REVOKED = "messenger.internal.device_revoked"
# registered (invoke "single") by the one delivery session that leads on a router shard
INTERNAL_DELIVERY_LEADER = "messenger.internal.delivery.leader"

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
        CHAT_CREATE_DIRECT,
        CHAT_CREATE_GROUP,
        CHAT_GET,
        CHAT_LIST,
        CHAT_ADD_MEMBERS,
        CHAT_REMOVE_MEMBER,
        CHAT_LEAVE,
        CHAT_UPDATE,
        CHAT_TYPING,
        MESSAGE_SEND,
        MESSAGE_HISTORY,
        MESSAGE_EDIT,
        MESSAGE_DELETE,
        MESSAGE_REACT,
        MESSAGE_MARK_DELIVERED,
        MESSAGE_MARK_READ,
        PRESENCE_GET,
        SYNC_GET_UPDATES,
        MEDIA_CREATE_UPLOAD,
        MEDIA_COMPLETE,
        MEDIA_GET,
        CHAT_MUTE,
        PUSH_REGISTER,
        PUSH_UNREGISTER,
        PUSH_CONFIG,
    }
)

ERROR_PREFIX = "messenger.error."

"""Apache Cassandra adapter of :class:`ChatStore` (the distributed profile).

See ``docs/design/messaging.md`` for the table plan. Everything here follows the port's
docstrings; this page explains how that is done without transactions.

Driving the driver
------------------
Every statement is prepared at :meth:`CassandraChatStore.start` and run with
``session.execute_async``; the driver's ``ResponseFuture`` becomes a Twisted ``Deferred`` in
:func:`_as_deferred` (the driver calls back on its own event-loop thread, libev or asyncore,
whichever it picks; results are handed to the reactor with ``reactor.callFromThread``). The
driver's blocking calls (connecting, preparing, shutting down) run in the reactor's thread
pool, never on the reactor. Reads and writes use ``LOCAL_QUORUM``; lightweight transactions
(LWT) use ``SERIAL`` (or ``LOCAL_SERIAL``, see ``serial_consistency``) and so do the reads
that must see a transaction in progress. Each statement runs under
``CircuitBreaker("cassandra", reactor)``: reads and plain writes (idempotent in Cassandra)
are retried, LWTs are not. An LWT whose outcome is unknown (``WriteTimeout`` of type CAS) is
resolved by reading the row at ``SERIAL``, which also completes the transaction if it was
accepted; every LWT here writes something that identifies its writer (a claim token, an op
id, a message id) so the read tells whether it was ours. Plain writes that go together are sent
as unlogged batches of at most ``BATCH_ROWS`` rows (one round trip; none needs atomicity).

Allocation without gaps
-----------------------
- ``seq``: ``UPDATE chats SET last_seq = n+1, last_message = <the new message> ... IF
  last_seq = n AND members = <members as read>``; on contention the answer carries the new
  ``last_seq`` and ``members`` and the loop tries again. The condition on ``members`` makes
  the fan-out list exactly "the members as stored at that moment". The first try takes ``n``
  and the members from what this process last read or wrote of the chat (no read; the
  service's ``get_chat`` just before the send keeps that fresh): a wrong guess costs one try.
- ``update_id``: ``INSERT INTO user_updates ... IF NOT EXISTS`` at the user's next id; the
  row *is* the allocation. On not-applied the id is taken: read the tail and try after it.
  ``user_state.last_update_id`` is a hint written with ``USING TIMESTAMP <update_id>`` (so
  the highest id wins whatever the order of the writes); the exact last id is the hint's
  bucket read from its tail upward (ids have no gaps, so a full bucket means "look in the
  next one").
- Inside one process, allocations for one chat (and for one user) queue on a local lock, so
  the LWTs of one process never compete with each other; processes compete through Paxos.

Claims: idempotency and dedupe
------------------------------
Two tables hold claims written with ``INSERT ... IF NOT EXISTS`` *before* anything is
allocated: ``messages_by_client_id`` (sender, client_msg_id) for ``append_message`` and
``user_update_keys`` (user, dedupe_key) for every stored update (updates without a
``dedupe_key`` get ``~op:<op_id>:<index>``, so a recovered operation never stores them
twice). A claim holds a random token, the time it was taken and what is needed to finish the
work (the message draft; the lowest id the update can have). When the work is done, the
claim gets its result (``seq`` / ``update_id``).

A second caller that meets a claim without result looks for the work in the log (from the
claim's lower bound: its holder may have died after storing it), else waits a moment for it (a
concurrent retry), then answers ``Unavailable``. A claim older than ``grace_s`` is stale: its owner is
gone, because an owner never starts an allocation more than ``grace_s / 3`` after taking its
claim. A stale claim is first checked (did the owner allocate before dying? the chat's
``last_message`` or the claim's ``seq``; the user's updates from the claim's lower bound on,
looking for the key), then taken over with ``UPDATE ... IF claim = <old token>`` and
finished.

The fan-out's keys (``msg:<chat_id>:<seq>``) are claimed together with the ``seq`` allocation,
for the seq the allocation guesses: those claims name the message (``<token>.<message_id>``).
If the guess was right they are used, else released. A claim of ``msg:<chat>:<n>`` that names
another message than message ``n`` comes from a send that guessed ``n`` and lost it, which never
stores anything under it (it stores only after its allocation at that seq succeeded): whoever
fans out message ``n`` takes such a claim over at once. An early claim never waits and never
takes anything over.

Recoverable writes
------------------
Cassandra has no transaction across rows, so each change is made recoverable instead:

1. ``pending_ops (shard, op_id)`` gets a row describing the operation (kind and a JSON body:
   the drafts of its updates, the members added and removed, ...) before anything else;
2. the one row that decides the change is written with an LWT (the chat, the message, the
   receipts row; for ``append_message`` the ``seq`` allocation). Chats, messages and
   receipts rows keep the ids of their last 32 operations (``recent_ops``), so the recovery
   can tell whether the deciding write happened;
3. the consequences follow, each idempotent: receipts rows of members added and removed
   (guarded by the chat version they joined at), the chat's ``last_message``, the updates
   (dedupe keys);
4. the pending row is deleted.

:meth:`CassandraChatStore.recover` (run at start and every ``recovery_interval_s``) finishes
every pending operation older than ``grace_s``: if the deciding write happened it redoes step
3, else it drops the row. For ``append_message`` the steps are: claim ``(sender,
client_msg_id)`` while the pending row is written; allocate ``seq`` while claiming the fan-out's
keys (above); then at once, concurrently: write the message row (``IF NOT EXISTS``,
``fanout_done = false``, with the member list of the fan-out) and record the ``seq`` in the
claim and the ``messages_by_id`` index; store ``message.new`` for every member of the
allocation (key ``msg:<chat_id>:<seq>``); move the sender's receipts. Then it answers, and the
bookkeeping follows without the caller waiting (the keys learn their ``update_id``, the
``user_state`` hints, ``fanout_done``, the pending row is deleted; all idempotent, and redone by
the recovery if lost; :meth:`CassandraChatStore.stop` waits for it). The chat's
``last_message`` holds the whole new message, so a message whose writer died right after the
allocation is never lost: whoever allocates the next ``seq`` (or changes the members) first
makes sure the row of the current ``last_seq`` exists (written from ``last_message`` if not)
with its index (written again unless this process wrote it: its writer may have died between
the row and the index). Hence, once ``seq`` n+1 is taken, rows 1..n exist and the claim of n
has its ``seq`` (which a writer resuming a dead one's claim relies on).

A re-send of an accepted ``client_msg_id`` whose message's ``fanout_done`` is still false (its
writer is at work, or died) finishes the fan-out the way the recovery does before it answers.

Limits: the ``pending_ops`` partitions (16 shards) collect tombstones; the table has a short
``gc_grace_seconds`` (a row that comes back is harmless: recovery is idempotent). Clocks of
the nodes running this adapter must agree within a few seconds (claims go stale by time).
Several instances may start at once: each migration is claimed with an LWT and its
statements are ``IF NOT EXISTS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, WriteTimeout, WriteType
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement, BatchType, SimpleStatement, dict_factory
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from common.adapters.cassandra import as_deferred as _as_deferred
from common.errors import Conflict, MessengerError, NotFound, Unavailable
from common.resilience import CLOSED, CircuitBreaker
from components.chat.domain import (
    BUCKET_SIZE,
    MESSAGE_NEW,
    Chat,
    Member,
    Message,
    Receipts,
    Update,
    buckets_between,
)
from components.chat.ports import Appended, MessageDraft, UpdateDraft

T = TypeVar("T")
Row = dict[str, Any]
Write = tuple[str, Sequence[Any]]  # a plain write: statement name and parameters
log = Logger()

CAS_WRITE_UNKNOWN = 0x1700  # protocol v5 error: the LWT may or may not have been applied (no driver class for it)
KEYSPACE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
SHARDS = 16  # partitions of pending_ops
RECENT_OPS = 32  # op ids kept on a chat, message or receipts row
BATCH_ROWS = 8  # plain writes per unlogged batch (Cassandra warns from 10 partitions in one)
DEFAULT_REPLICATION: dict[str, Any] = {"class": "SimpleStrategy", "replication_factor": 1}

# Ordered, append-only: never edit a migration once released, add a new one. ``{ks}`` is the keyspace.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS {ks}.chats (
            chat_id text PRIMARY KEY, chat_type text, title text, owner_id text, members text,
            created_at_ms bigint, updated_at_ms bigint, last_seq bigint, last_message text,
            version int, recent_ops text)""",
        """CREATE TABLE IF NOT EXISTS {ks}.messages (
            chat_id text, bucket bigint, seq bigint, message_id text, sender_id text, client_msg_id text,
            body text, reply_to bigint, media list<text>, sent_at_ms bigint, edited_at_ms bigint,
            deleted boolean, reactions text, version int, fanout_to text, fanout_done boolean, recent_ops text,
            PRIMARY KEY ((chat_id, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.messages_by_id (
            chat_id text, message_id text, seq bigint, PRIMARY KEY ((chat_id, message_id)))""",
        """CREATE TABLE IF NOT EXISTS {ks}.messages_by_client_id (
            sender_id text, client_msg_id text, chat_id text, message_id text, seq bigint, draft text,
            claim text, claimed_at_ms bigint, PRIMARY KEY ((sender_id, client_msg_id)))""",
        """CREATE TABLE IF NOT EXISTS {ks}.user_updates (
            user_id text, bucket bigint, update_id bigint, update_type text, chat_id text, at_ms bigint,
            data text, dedupe_key text, claim text,
            PRIMARY KEY ((user_id, bucket), update_id)) WITH CLUSTERING ORDER BY (update_id ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.user_update_keys (
            user_id text, dedupe_key text, update_id bigint, claim text, claimed_at_ms bigint, lo bigint,
            PRIMARY KEY ((user_id, dedupe_key))) WITH default_time_to_live = 2592000""",
        """CREATE TABLE IF NOT EXISTS {ks}.user_chats (
            user_id text, chat_id text, last_delivered_seq bigint, last_read_seq bigint, joined_at_ms bigint,
            joined_version int, recent_ops text, PRIMARY KEY (user_id, chat_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.user_state (user_id text PRIMARY KEY, last_update_id bigint)""",
        """CREATE TABLE IF NOT EXISTS {ks}.pending_ops (
            shard int, op_id text, kind text, created_at_ms bigint, body text,
            PRIMARY KEY (shard, op_id)) WITH gc_grace_seconds = 3600""",
    ),
    (  # 2: per-member mute of a chat's push notifications
        """CREATE TABLE IF NOT EXISTS {ks}.chat_mutes (
            chat_id text, user_id text, until_ms bigint, PRIMARY KEY (chat_id, user_id))""",
    ),
)

_MESSAGE_COLUMNS = (
    "chat_id, bucket, seq, message_id, sender_id, client_msg_id, body, reply_to, media, sent_at_ms,"
    " edited_at_ms, deleted, reactions, version, fanout_to, fanout_done"
)

STATEMENTS: dict[str, str] = {
    # chats
    "chat_get": "SELECT * FROM {ks}.chats WHERE chat_id = ?",
    "chat_insert": "INSERT INTO {ks}.chats (chat_id, chat_type, title, owner_id, members, created_at_ms,"
    " updated_at_ms, last_seq, last_message, version, recent_ops) VALUES (?, ?, ?, ?, ?, ?, ?, 0, null, 1, ?)"
    " IF NOT EXISTS",
    "chat_alloc": "UPDATE {ks}.chats SET last_seq = ?, last_message = ?, updated_at_ms = ? WHERE chat_id = ?"
    " IF last_seq = ? AND members = ?",
    "chat_update": "UPDATE {ks}.chats SET title = ?, owner_id = ?, members = ?, updated_at_ms = ?, version = ?,"
    " recent_ops = ? WHERE chat_id = ? IF version = ? AND last_seq = ? AND recent_ops = ?",
    "chat_last_message": "UPDATE {ks}.chats SET last_message = ? WHERE chat_id = ?"
    " IF last_seq = ? AND last_message = ?",
    # messages
    "msg_get": "SELECT * FROM {ks}.messages WHERE chat_id = ? AND bucket = ? AND seq = ?",
    "msg_range": "SELECT * FROM {ks}.messages WHERE chat_id = ? AND bucket = ? AND seq >= ? AND seq <= ?",
    "msg_insert": f"INSERT INTO {{ks}}.messages ({_MESSAGE_COLUMNS}) VALUES"
    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, false) IF NOT EXISTS",
    "msg_update": "UPDATE {ks}.messages SET body = ?, media = ?, reactions = ?, edited_at_ms = ?, deleted = ?,"
    " version = ?, recent_ops = ? WHERE chat_id = ? AND bucket = ? AND seq = ? IF version = ?",
    "msg_fanout_done": "UPDATE {ks}.messages SET fanout_done = true WHERE chat_id = ? AND bucket = ? AND seq = ?",
    "by_id_insert": "INSERT INTO {ks}.messages_by_id (chat_id, message_id, seq) VALUES (?, ?, ?)",
    "by_id_get": "SELECT seq FROM {ks}.messages_by_id WHERE chat_id = ? AND message_id = ?",
    # idempotency of append_message
    "res_claim": "INSERT INTO {ks}.messages_by_client_id (sender_id, client_msg_id, chat_id, message_id, draft,"
    " claim, claimed_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "res_get": "SELECT * FROM {ks}.messages_by_client_id WHERE sender_id = ? AND client_msg_id = ?",
    "res_set_seq": "UPDATE {ks}.messages_by_client_id SET seq = ? WHERE sender_id = ? AND client_msg_id = ?",
    "res_takeover": "UPDATE {ks}.messages_by_client_id SET claim = ?, claimed_at_ms = ?"
    " WHERE sender_id = ? AND client_msg_id = ? IF claim = ?",
    "res_release": "DELETE FROM {ks}.messages_by_client_id WHERE sender_id = ? AND client_msg_id = ? IF claim = ?",
    # update stream
    "upd_insert": "INSERT INTO {ks}.user_updates (user_id, bucket, update_id, update_type, chat_id, at_ms, data,"
    " dedupe_key, claim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "upd_get": "SELECT * FROM {ks}.user_updates WHERE user_id = ? AND bucket = ? AND update_id = ?",
    "upd_range": "SELECT * FROM {ks}.user_updates WHERE user_id = ? AND bucket = ? AND update_id >= ?"
    " AND update_id <= ?",
    "upd_tail": "SELECT update_id FROM {ks}.user_updates WHERE user_id = ? AND bucket = ?"
    " ORDER BY update_id DESC LIMIT 1",
    "upd_keys_from": "SELECT update_id, dedupe_key FROM {ks}.user_updates WHERE user_id = ? AND bucket = ?"
    " AND update_id >= ?",
    "key_claim": "INSERT INTO {ks}.user_update_keys (user_id, dedupe_key, claim, claimed_at_ms, lo)"
    " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
    "key_get": "SELECT * FROM {ks}.user_update_keys WHERE user_id = ? AND dedupe_key = ?",
    "key_set": "UPDATE {ks}.user_update_keys SET update_id = ? WHERE user_id = ? AND dedupe_key = ?",
    "key_takeover": "UPDATE {ks}.user_update_keys SET claim = ?, claimed_at_ms = ?, lo = ?"
    " WHERE user_id = ? AND dedupe_key = ? IF claim = ?",
    "key_release": "DELETE FROM {ks}.user_update_keys WHERE user_id = ? AND dedupe_key = ? IF claim = ?",
    "state_get": "SELECT last_update_id FROM {ks}.user_state WHERE user_id = ?",
    "state_set": "UPDATE {ks}.user_state USING TIMESTAMP ? SET last_update_id = ? WHERE user_id = ?",
    # memberships and receipts
    "uc_get": "SELECT * FROM {ks}.user_chats WHERE user_id = ? AND chat_id = ?",
    "uc_list": "SELECT chat_id, last_delivered_seq, last_read_seq FROM {ks}.user_chats WHERE user_id = ?",
    "uc_insert": "INSERT INTO {ks}.user_chats (user_id, chat_id, last_delivered_seq, last_read_seq, joined_at_ms,"
    " joined_version) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    "uc_rejoin": "UPDATE {ks}.user_chats SET last_delivered_seq = ?, last_read_seq = ?, joined_at_ms = ?,"
    " joined_version = ?, recent_ops = null WHERE user_id = ? AND chat_id = ? IF joined_version = ?",
    "uc_delete": "DELETE FROM {ks}.user_chats WHERE user_id = ? AND chat_id = ? IF joined_version < ?",
    "uc_cas": "UPDATE {ks}.user_chats SET last_delivered_seq = ?, last_read_seq = ?, recent_ops = ?"
    " WHERE user_id = ? AND chat_id = ? IF last_delivered_seq = ? AND last_read_seq = ? AND recent_ops = ?",
    "uc_bump": "UPDATE {ks}.user_chats SET last_delivered_seq = ?, last_read_seq = ? WHERE user_id = ?"
    " AND chat_id = ? IF last_read_seq < ? AND last_delivered_seq <= ?",
    "uc_bump_read": "UPDATE {ks}.user_chats SET last_read_seq = ? WHERE user_id = ? AND chat_id = ?"
    " IF last_read_seq < ?",
    # recovery
    "pend_insert": "INSERT INTO {ks}.pending_ops (shard, op_id, kind, created_at_ms, body) VALUES (?, ?, ?, ?, ?)",
    "pend_delete": "DELETE FROM {ks}.pending_ops WHERE shard = ? AND op_id = ?",
    "pend_scan": "SELECT * FROM {ks}.pending_ops WHERE shard = ? LIMIT ?",
    # per-member settings
    "mute_set": "INSERT INTO {ks}.chat_mutes (chat_id, user_id, until_ms) VALUES (?, ?, ?)",
    "mute_delete": "DELETE FROM {ks}.chat_mutes WHERE chat_id = ? AND user_id = ?",
    "mute_list": "SELECT user_id, until_ms FROM {ks}.chat_mutes WHERE chat_id = ?",
}

# pending operation kinds
APPEND, CREATE_CHAT, UPDATE_CHAT, UPDATE_MESSAGE, SET_RECEIPTS, APPEND_UPDATES = (
    "append",
    "create_chat",
    "update_chat",
    "update_message",
    "set_receipts",
    "append_updates",
)


class SimulatedCrash(Exception):
    """Raised at a crash point named in :attr:`CassandraChatStore.crash_points` (tests only)."""


@dataclass(frozen=True)
class _Lwt:
    """Outcome of one LWT: ``applied`` is None when unknown (resolve by a SERIAL read);
    ``row`` holds the current values the server sent back when not applied (None: no row)."""

    applied: bool | None
    row: Row | None


@dataclass(frozen=True)
class _Owned:
    """This call holds the claim of ``(sender, client_msg_id)`` and allocates for ``draft``."""

    draft: MessageDraft
    claimed_at_ms: int
    resumed: bool  # taken over from a writer that died: it may have allocated already


@dataclass(frozen=True)
class _Held:
    """This call holds the claim of a dedupe key."""

    claim: str
    claimed_at_ms: int


Early = Mapping[str, "defer.Deferred[_Held | str]"]
"""Claims of a fan-out's keys taken with the allocation, by user: held, or the token tried."""


@dataclass(frozen=True)
class _Accepted:
    """The claim has its result already."""

    chat_id: str
    seq: int


# -- plumbing ------------------------------------------------------------------------------------
class _KeyedLocks:
    """One ``DeferredLock`` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[defer.DeferredLock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (defer.DeferredLock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _token() -> str:
    return uuid.uuid4().hex


def _owner_of(claim: str | None) -> str | None:
    """The message whose fan-out took a dedupe key's claim (those claims read ``<token>.<message_id>``)."""
    if not claim:
        return None
    _, dot, owner = claim.partition(".")
    return owner if dot else None


def _recent_push(text: str | None, op_id: str, info: Any = None) -> str:
    ops: list[Any] = json.loads(text) if text else []
    ops.append([op_id, info])
    return _dumps(ops[-RECENT_OPS:])


def _recent_find(text: str | None, op_id: str) -> tuple[bool, Any]:
    for entry in json.loads(text) if text else []:
        if entry[0] == op_id:
            return True, entry[1]
    return False, None


def _members_json(members: Iterable[Member]) -> str:
    return _dumps([[m.user_id, m.joined_at_ms] for m in members])


def _members_of(text: str | None) -> tuple[Member, ...]:
    return tuple(Member(u, int(at)) for u, at in (json.loads(text) if text else []))


def _chat_of(row: Row) -> Chat:
    return Chat(
        chat_id=row["chat_id"],
        type=row["chat_type"],
        title=row["title"],
        owner_id=row["owner_id"],
        members=_members_of(row["members"]),
        created_at_ms=row["created_at_ms"],
        updated_at_ms=row["updated_at_ms"],
        last_seq=row["last_seq"] or 0,
        last_message=json.loads(row["last_message"]) if row["last_message"] else None,
        version=row["version"],
    )


def _user_ids(members: str | None) -> list[str]:
    return [m.user_id for m in _members_of(members)]


def _fanout_of(message_row: Row) -> list[str]:
    ids: list[str] = json.loads(message_row["fanout_to"] or "[]")
    return ids


def _reactions_json(reactions: Mapping[str, Sequence[str]]) -> str:
    return _dumps({emoji: list(users) for emoji, users in reactions.items()})


def _media_text(item: Any) -> str:
    """One attachment in the ``media list<text>`` column: a summary as JSON (a bare id as is)."""
    return item if isinstance(item, str) else _dumps(item)


def _media_of(text: str) -> Any:
    return json.loads(text) if text.startswith("{") else text


def _message_of(row: Row) -> Message:
    reactions = json.loads(row["reactions"]) if row["reactions"] else {}
    return Message(
        message_id=row["message_id"],
        chat_id=row["chat_id"],
        seq=row["seq"],
        sender_id=row["sender_id"],
        client_msg_id=row["client_msg_id"],
        text=row["body"],
        sent_at_ms=row["sent_at_ms"],
        reply_to=row["reply_to"],
        media=tuple(_media_of(m) for m in row["media"] or ()),
        edited_at_ms=row["edited_at_ms"],
        deleted=bool(row["deleted"]),
        reactions={emoji: tuple(users) for emoji, users in reactions.items()},
        version=row["version"],
    )


def _message_draft_json(d: MessageDraft) -> str:
    return _dumps({**dataclasses.asdict(d), "media": list(d.media)})


def _message_draft_of(text: str) -> MessageDraft:
    d = json.loads(text)
    return MessageDraft(**{**d, "media": tuple(d["media"])})


def _update_draft_json(d: UpdateDraft) -> dict[str, Any]:
    return dataclasses.asdict(d)


def _update_draft_of(d: Mapping[str, Any]) -> UpdateDraft:
    return UpdateDraft(**d)


def _update_of(row: Row) -> Update:
    return Update(
        user_id=row["user_id"],
        update_id=row["update_id"],
        type=row["update_type"],
        chat_id=row["chat_id"],
        at_ms=row["at_ms"],
        data=json.loads(row["data"]),
    )


def _replication_cql(replication: Mapping[str, Any]) -> str:
    def lit(v: Any) -> str:
        return "'" + str(v).replace("'", "''") + "'"

    return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in replication.items()) + "}"


# -- the store -----------------------------------------------------------------------------------
class CassandraChatStore:
    """:class:`ChatStore` on Cassandra; see the module docstring.

    ``replication``: of the keyspace when it is created (default ``SimpleStrategy``, RF 1).
    ``bucket_size``: messages / updates per partition (tests use a small one).
    ``grace_s``: age after which a pending operation or an unfinished claim belongs to the
    recovery (its writer stopped at ``grace_s / 3``). ``recovery_interval_s``: period of the
    background sweep (None: only at start).
    """

    crash_points: set[str]
    """Test hook: raise :class:`SimulatedCrash` at these named points (``append.allocated``,
    ``append.stored``, ``update.allocated``, ``op.applied``) to simulate a process that dies."""

    def __init__(
        self,
        hosts: list[str],
        port: int,
        keyspace: str,
        reactor: Any,
        *,
        replication: dict[str, Any] | None = None,
        bucket_size: int = BUCKET_SIZE,
        serial_consistency: str = "SERIAL",
        local_dc: str | None = None,
        grace_s: float = 15.0,
        recovery_interval_s: float | None = 5.0,
        protocol_version: int = 5,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 2.8,
        claim_wait_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not KEYSPACE_RE.match(keyspace):
            raise ValueError(f"not a plain keyspace name: {keyspace!r}")
        if bucket_size < 2:
            raise ValueError("bucket_size must be at least 2")
        if serial_consistency not in ("SERIAL", "LOCAL_SERIAL"):
            raise ValueError("serial_consistency is SERIAL or LOCAL_SERIAL")
        self.hosts = list(hosts)
        self.port = port
        self.keyspace = keyspace
        self._reactor = reactor
        self._replication = dict(replication or DEFAULT_REPLICATION)
        self._bucket_size = bucket_size
        self._serial = getattr(ConsistencyLevel, serial_consistency)
        self._local_dc = local_dc
        self._grace_ms = int(grace_s * 1000)
        self._recovery_interval_s = recovery_interval_s
        self._protocol_version = protocol_version
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._claim_wait_s = claim_wait_s
        self.breaker = breaker or CircuitBreaker("cassandra", reactor)
        self.crash_points = set()
        self._cluster: Any = None
        self._session: Any = None
        self._stmts: dict[str, Any] = {}
        self._chat_locks = _KeyedLocks()
        self._user_locks = _KeyedLocks()
        self._next_update_id: dict[str, int] = {}  # next id to try, per user (a hint)
        self._written_seq: dict[str, int] = {}  # rows 1..n of a chat and their index are known to exist
        # (last_seq, members) of a chat as last read or written here: the first guess of an allocation
        self._chat_hints: dict[str, tuple[int, str]] = {}
        self._background: set[defer.Deferred[None]] = set()  # bookkeeping writes after an answer
        self._sweep: task.LoopingCall | None = None
        self._sweeping: defer.Deferred[None] | None = None  # the background recovery running now
        self._recovering = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, create the keyspace and tables if missing, prepare every statement and
        finish what crashed writers left. ``Unavailable`` if Cassandra cannot be reached."""
        if self._session is not None:
            return
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self._local_dc)),
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=self._serial,
            request_timeout=self._request_timeout_s,
            row_factory=dict_factory,
        )
        cluster = Cluster(
            contact_points=self.hosts,
            port=self.port,
            protocol_version=self._protocol_version,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=self._connect_timeout_s,
            control_connection_timeout=self._connect_timeout_s,
        )
        try:
            session = await threads.deferToThread(cluster.connect)
        except Exception as e:
            await self._shutdown_cluster(cluster)
            raise Unavailable(f"cassandra is unreachable: {type(e).__name__}: {e}") from e
        self._cluster, self._session = cluster, session
        try:
            await self._migrate()
            self._stmts = await threads.deferToThread(self._prepare_all, session)
        except BaseException as e:
            await self.stop()
            if isinstance(e, MessengerError):
                raise
            raise Unavailable(f"cassandra schema setup failed: {type(e).__name__}: {e}") from e
        try:
            await self.recover()
        except Unavailable as e:
            log.warn("cassandra chat recovery at start failed: {error}", error=e)
        if self._recovery_interval_s:
            self._sweep = task.LoopingCall(self._sweep_once)
            self._sweep.clock = self._reactor
            self._sweep.start(self._recovery_interval_s, now=False)

    async def stop(self) -> None:
        """Stop the sweep and close every connection. Safe to call twice."""
        sweep, self._sweep = self._sweep, None
        if sweep is not None and sweep.running:
            sweep.stop()
        if self._sweeping is not None:
            await self._sweeping  # let a running recovery finish its operation (it never fails)
        while self._background:  # bookkeeping of answered writes (they never fail)
            await defer.DeferredList(list(self._background))
        cluster, self._cluster, self._session = self._cluster, None, None
        self._stmts = {}
        if cluster is not None:
            await self._shutdown_cluster(cluster)

    @staticmethod
    async def _shutdown_cluster(cluster: Any) -> None:
        try:
            await threads.deferToThread(cluster.shutdown)
        except Exception as e:  # already shut down, or never connected
            log.info("cassandra shutdown: {error}", error=e)

    def _prepare_all(self, session: Any) -> dict[str, Any]:
        """Runs in a thread: the driver prepares synchronously."""
        out: dict[str, Any] = {}
        for name, cql in STATEMENTS.items():
            stmt = session.prepare(cql.format(ks=self.keyspace))
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            stmt.serial_consistency_level = self._serial
            out[name] = stmt
        return out

    async def _ddl(self, cql: str, params: Sequence[Any] | None = None, *, serial: bool = False) -> list[Row]:
        """Schema statements and the migration bookkeeping: not prepared, long timeout, no breaker."""
        stmt = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        if serial:
            stmt.serial_consistency_level = self._serial
        future = self._session.execute_async(stmt, params, timeout=60.0)
        return await _as_deferred(self._reactor, future)

    async def _migrate(self) -> None:
        ks = self.keyspace
        await self._ddl(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {_replication_cql(self._replication)}")
        await self._ddl(
            f"CREATE TABLE IF NOT EXISTS {ks}.schema_version"
            " (version int PRIMARY KEY, state text, claim text, applied_at_ms bigint)"
        )
        rows = await self._ddl(f"SELECT version, state FROM {ks}.schema_version")
        done = {r["version"] for r in rows if r["state"] == "done"}
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            claim = _token()
            won = await self._ddl(
                f"INSERT INTO {ks}.schema_version (version, state, claim, applied_at_ms) VALUES (%s, %s, %s, %s)"
                " IF NOT EXISTS",
                (version, "applying", claim, self._now_ms()),
                serial=True,
            )
            if not won[0]["[applied]"]:
                # another instance is applying it: wait for it (if it died, apply anyway: every statement
                # is idempotent)
                state = won[0].get("state")
                for _ in range(120):
                    if state == "done":
                        break
                    await self._sleep(0.5)
                    rows = await self._ddl(f"SELECT state FROM {ks}.schema_version WHERE version = %s", (version,))
                    state = rows[0]["state"] if rows else None
                if state == "done":
                    continue
            for cql in statements:
                await self._ddl(cql.format(ks=ks))
            await self._ddl(
                f"UPDATE {ks}.schema_version SET state = 'done', applied_at_ms = %s WHERE version = %s",
                (self._now_ms(), version),
            )
            log.info("cassandra chat schema of {ks} migrated to version {version}", ks=ks, version=version)

    # -- running statements ------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._reactor.seconds() * 1000)

    def _stmt(self, name: str) -> Any:
        if self._session is None:
            raise Unavailable("cassandra chat store is not started")
        return self._stmts[name]

    def _run(self, name: str, params: Sequence[Any], consistency: Any = None) -> defer.Deferred[list[Row]]:
        stmt = self._stmt(name)
        bound = stmt.bind(params)
        if consistency is not None:
            bound.consistency_level = consistency
        return _as_deferred(self._reactor, self._session.execute_async(bound, timeout=self._request_timeout_s))

    async def _read(self, name: str, params: Sequence[Any], *, serial: bool = False) -> list[Row]:
        self._stmt(name)
        consistency = self._serial if serial else None
        return await self.breaker.call(lambda: self._run(name, params, consistency), idempotent=True)

    async def _read_one(self, name: str, params: Sequence[Any], *, serial: bool = False) -> Row | None:
        rows = await self._read(name, params, serial=serial)
        return rows[0] if rows else None

    async def _write(self, name: str, params: Sequence[Any]) -> None:
        """A plain write: idempotent in Cassandra (no counters, no list appends), so retried."""
        self._stmt(name)
        await self.breaker.call(lambda: self._run(name, params), idempotent=True)

    async def _write_many(self, writes: Sequence[Write]) -> None:
        """Plain writes, sent as unlogged batches of up to ``BATCH_ROWS`` (one round trip each
        instead of one per row). No atomicity is wanted: every write is idempotent on its own."""
        if len(writes) == 1:
            await self._write(*writes[0])
            return
        for name, _ in writes:
            self._stmt(name)
        chunks = [writes[i : i + BATCH_ROWS] for i in range(0, len(writes), BATCH_ROWS)]
        await self._gather(self._write_batch(chunk) for chunk in chunks)

    async def _write_batch(self, writes: Sequence[Write]) -> None:
        await self.breaker.call(lambda: self._run_batch(writes), idempotent=True)

    def _run_batch(self, writes: Sequence[Write]) -> defer.Deferred[list[Row]]:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        for name, params in writes:
            batch.add(self._stmt(name), params)
        return _as_deferred(self._reactor, self._session.execute_async(batch, timeout=self._request_timeout_s))

    async def _lwt(self, name: str, params: Sequence[Any]) -> _Lwt:
        self._stmt(name)

        async def attempt() -> list[Row] | None:
            try:
                return await self._run(name, params)
            except WriteTimeout as e:
                if e.write_type == WriteType.CAS:
                    return None  # outcome unknown: the caller reads at SERIAL
                raise
            except ErrorMessage as e:
                if e.code == CAS_WRITE_UNKNOWN:
                    return None
                raise

        rows = await self.breaker.call(attempt, idempotent=False)
        if rows is None:
            return _Lwt(None, None)
        row = dict(rows[0])
        applied = bool(row.pop("[applied]"))
        return _Lwt(applied, row or None)

    async def _compare_and_set(
        self,
        name: str,
        row: Row,
        op_id: str,
        params: Callable[[Row, str], Sequence[Any]],
        reread: Callable[[], Awaitable[Row | None]],
        retry_from: Callable[[Row, Row | None], Row],
        *,
        info: Callable[[Row], Any] = lambda row: None,
        before: Callable[[Row], Awaitable[None]] | None = None,
    ) -> Any:
        """A compare-and-set of one row that records ``op_id`` in its ``recent_ops``.

        Runs the LWT ``name`` with ``params(row, recent_ops)`` (``recent_ops``: the row's list
        with ``[op_id, info(row)]`` pushed; ``before(row)`` first, if given) until it is applied.
        Not applied: ``retry_from(row, current)`` raises if the change no longer holds
        (``current`` None: the row is gone) or answers the row to try again from (the LWT's
        answer carries the columns of its condition). Outcome unknown: the row is read again at
        SERIAL (``reread``); ``op_id`` in its ``recent_ops`` means it was applied. Answers
        ``info`` of the row the change was applied on."""
        while True:
            if before is not None:
                await before(row)
            at = info(row)
            r = await self._lwt(name, params(row, _recent_push(row["recent_ops"], op_id, at)))
            if r.applied:
                return at
            current = r.row
            if r.applied is None:
                current = await reread()
                if current is not None:
                    found, recorded = _recent_find(current["recent_ops"], op_id)
                    if found:
                        return recorded
            row = retry_from(row, current)

    async def _gather(self, aws: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
        """Run concurrently; wait for all; raise the first error (in list order)."""
        ds: list[defer.Deferred[T]] = [defer.ensureDeferred(a) for a in aws]
        results: list[tuple[bool, Any]] = await defer.DeferredList(ds, consumeErrors=True)
        for ok, value in results:
            if not ok:
                value.raiseException()
        return [value for _, value in results]

    def _later(self, writes: Sequence[Write]) -> None:
        """Send ``writes`` (idempotent bookkeeping whose loss the recovery repairs) without making
        the caller wait; :meth:`stop` waits for them."""

        async def run() -> None:
            try:
                await self._write_many(writes)
            except Exception as e:
                log.info("cassandra chat bookkeeping left to the recovery: {error}", error=e)

        self._spawn(run())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; :meth:`stop` waits for it."""
        d = defer.ensureDeferred(work)
        d.addErrback(lambda f: log.failure("cassandra chat background work", f))
        if not d.called:
            self._background.add(d)
            d.addBoth(lambda _: self._background.discard(d))

    def _checkpoint(self, name: str) -> None:
        if name in self.crash_points:
            raise SimulatedCrash(name)

    def _bucket(self, n: int) -> int:
        return n // self._bucket_size

    def _buckets(self, lo: int, hi: int) -> list[int]:
        if self._bucket_size == BUCKET_SIZE:
            return buckets_between(lo, hi)
        return list(range(lo // self._bucket_size, hi // self._bucket_size + 1)) if hi >= lo else []

    def _deadline(self, claimed_at_ms: int) -> None:
        """An owner never starts an allocation late: after ``grace_s`` its claim is someone else's."""
        if self._now_ms() - claimed_at_ms > self._grace_ms // 3:
            raise Unavailable("cassandra is too slow; retry")

    async def _sleep(self, seconds: float) -> None:
        await task.deferLater(self._reactor, seconds, lambda: None)

    async def _wait_for(self, probe: Callable[[], Awaitable[T | None]]) -> T | None:
        """Poll ``probe`` for up to ``claim_wait_s`` until it answers something."""
        deadline = self._reactor.seconds() + self._claim_wait_s
        delay = 0.01
        while self._reactor.seconds() < deadline:
            await self._sleep(delay)
            found = await probe()
            if found is not None:
                return found
            delay = min(0.2, delay * 2)
        return None

    # -- pending operations --------------------------------------------------------------------
    async def _pend(self, kind: str, body: Mapping[str, Any]) -> tuple[int, str]:
        op_id = _token()
        shard = int(op_id[:8], 16) % SHARDS
        await self._write("pend_insert", (shard, op_id, kind, self._now_ms(), _dumps(body)))
        return shard, op_id

    async def _unpend(self, key: tuple[int, str]) -> None:
        await self._write("pend_delete", key)

    async def _unpend_quietly(self, key: tuple[int, str]) -> None:
        try:
            await self._unpend(key)
        except Unavailable:
            pass  # the recovery drops it later

    # -- chats ---------------------------------------------------------------------------------
    async def _chat_row(self, chat_id: str, *, serial: bool = False) -> Row | None:
        row = await self._read_one("chat_get", (chat_id,), serial=serial)
        if row is not None:
            self._note_chat(chat_id, row["last_seq"] or 0, row["members"])
        return row

    def _note_chat(self, chat_id: str, last_seq: int, members: str) -> None:
        """Remember the chat's ``last_seq`` and ``members`` (a hint: the allocation's LWT checks both)."""
        known = self._chat_hints.get(chat_id)
        if known is None or last_seq >= known[0]:
            if len(self._chat_hints) >= 100_000:
                self._chat_hints.clear()
            self._chat_hints[chat_id] = (last_seq, members)

    async def get_chat(self, chat_id: str) -> Chat | None:
        row = await self._chat_row(chat_id)
        return _chat_of(row) if row else None

    async def create_chat(self, chat: Chat, updates: list[UpdateDraft]) -> tuple[Chat, bool, list[Update]]:
        body = {
            "chat_id": chat.chat_id,
            "members": [[m.user_id, m.joined_at_ms] for m in chat.members],
            "updates": [_update_draft_json(u) for u in updates],
        }
        pending = await self._pend(CREATE_CHAT, body)
        op_id = pending[1]
        params = (
            chat.chat_id,
            chat.type,
            chat.title,
            chat.owner_id,
            _members_json(chat.members),
            chat.created_at_ms,
            chat.updated_at_ms,
            _recent_push(None, op_id, 0),
        )
        while True:
            r = await self._lwt("chat_insert", params)
            if r.applied is None:
                row = await self._chat_row(chat.chat_id, serial=True)
                if row is None:
                    continue
                if not _recent_find(row["recent_ops"], op_id)[0]:
                    r = _Lwt(False, row)
            if r.applied is False:
                await self._unpend_quietly(pending)
                assert r.row is not None
                return _chat_of(r.row), False, []
            break
        self._checkpoint("op.applied")
        stored = await self._finish_create_chat(chat.chat_id, chat.members, op_id, updates)
        await self._unpend(pending)
        return replace(chat, version=1, last_seq=0, last_message=None), True, stored

    async def _finish_create_chat(
        self,
        chat_id: str,
        members: Sequence[Member],
        op_id: str,
        updates: Sequence[UpdateDraft],
        stale_ms: int | None = None,
    ) -> list[Update]:
        await self._gather(self._member_joined(m.user_id, chat_id, 1, 0, m.joined_at_ms) for m in members)
        return await self._store_updates(op_id, updates, stale_ms)

    async def update_chat(self, chat: Chat, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        chat_id = chat.chat_id
        version = expected_version + 1
        async with self._chat_locks.hold(chat_id):
            row = await self._chat_row(chat_id)
            if row is None:
                raise NotFound("no such chat")
            if row["version"] != expected_version:
                raise Conflict("the chat changed; re-read it")
            before = {m.user_id for m in _members_of(row["members"])}
            after = {m.user_id for m in chat.members}
            added = [m for m in chat.members if m.user_id not in before]
            removed = [u for u in _members_of(row["members"]) if u.user_id not in after]
            body = {
                "chat_id": chat_id,
                "version": version,
                "added": [[m.user_id, m.joined_at_ms] for m in added],
                "removed": [m.user_id for m in removed],
                "updates": [_update_draft_json(u) for u in updates],
            }
            pending = await self._pend(UPDATE_CHAT, body)
            op_id = pending[1]
            try:
                last_seq = await self._apply_chat_update(chat, expected_version, op_id, row, bool(added or removed))
            except (NotFound, Conflict):
                await self._unpend_quietly(pending)
                raise
        self._checkpoint("op.applied")
        await self._finish_update_chat(chat_id, version, last_seq, added, [m.user_id for m in removed])
        stored = await self._store_updates(op_id, updates)
        await self._unpend(pending)
        return stored

    async def _apply_chat_update(
        self, chat: Chat, expected_version: int, op_id: str, row: Row, members_change: bool
    ) -> int:
        """The chat row's LWT; answers the ``last_seq`` it was applied at."""
        chat_id = chat.chat_id

        async def before(row: Row) -> None:
            last_seq = row["last_seq"] or 0
            if members_change and last_seq:
                # the fan-out of message last_seq goes to the members of its time: keep its row first
                await self._ensure_message(chat_id, last_seq)

        def params(row: Row, recent: str) -> Sequence[Any]:
            return (
                chat.title,
                chat.owner_id,
                _members_json(chat.members),
                chat.updated_at_ms,
                expected_version + 1,
                recent,
                chat_id,
                expected_version,
                row["last_seq"] or 0,
                row["recent_ops"],
            )

        def retry_from(row: Row, current: Row | None) -> Row:
            if current is None:
                raise NotFound("no such chat")
            if current["version"] != expected_version:
                raise Conflict("the chat changed; re-read it")
            return {**row, **current}  # only last_seq moved (a message): try again at the new one

        last_seq = int(
            await self._compare_and_set(
                "chat_update",
                row,
                op_id,
                params,
                lambda: self._chat_row(chat_id, serial=True),
                retry_from,
                info=lambda row: row["last_seq"] or 0,
                before=before,
            )
        )
        self._note_chat(chat_id, last_seq, _members_json(chat.members))
        return last_seq

    async def _finish_update_chat(
        self, chat_id: str, version: int, last_seq: int, added: Sequence[Member], removed: Sequence[str]
    ) -> None:
        await self._gather(
            [
                *(self._member_joined(m.user_id, chat_id, version, last_seq, m.joined_at_ms) for m in added),
                *(self._member_left(u, chat_id, version) for u in removed),
            ]
        )

    async def _member_joined(self, user_id: str, chat_id: str, version: int, last_seq: int, joined_at_ms: int) -> None:
        """A receipts row at ``(last_seq, last_seq)`` for a member who joined at chat ``version``,
        replacing one left over from an earlier membership."""
        while True:
            r = await self._lwt("uc_insert", (user_id, chat_id, last_seq, last_seq, joined_at_ms, version))
            if r.applied:
                return
            existing = r.row
            if r.applied is None:
                existing = await self._uc_row(user_id, chat_id, serial=True)
                if existing is None:
                    continue
            assert existing is not None
            joined = existing["joined_version"] or 0
            if joined >= version:
                return
            await self._lwt("uc_rejoin", (last_seq, last_seq, joined_at_ms, version, user_id, chat_id, joined))

    async def _member_left(self, user_id: str, chat_id: str, version: int) -> None:
        while (await self._lwt("uc_delete", (user_id, chat_id, version))).applied is None:
            pass

    async def list_user_chats(self, user_id: str) -> list[tuple[Chat, Receipts]]:
        rows = await self._read("uc_list", (user_id,))
        out: list[tuple[Chat, Receipts]] = []
        for i in range(0, len(rows), 64):
            part = rows[i : i + 64]
            chats = await self._gather(self._chat_row(r["chat_id"]) for r in part)
            for r, c in zip(part, chats, strict=True):
                if c is None:
                    continue
                chat = _chat_of(c)
                if chat.has_member(user_id):  # a row whose removal is still being finished
                    out.append((chat, Receipts(r["last_delivered_seq"] or 0, r["last_read_seq"] or 0)))
        return out

    # -- messages ------------------------------------------------------------------------------
    async def append_message(self, draft: MessageDraft) -> Appended:
        return await self._append(draft, self._grace_ms)

    async def _append(self, draft: MessageDraft, stale_ms: int) -> Appended:
        body = {"sender_id": draft.sender_id, "client_msg_id": draft.client_msg_id, "draft": _message_draft_json(draft)}
        claim = _token()
        claimed: defer.Deferred[Any] = defer.ensureDeferred(self._claim_message(draft, claim, stale_ms))
        pended: defer.Deferred[Any] = defer.ensureDeferred(self._pend(APPEND, body))
        results: list[tuple[bool, Any]] = await defer.DeferredList([claimed, pended], consumeErrors=True)
        (claim_ok, outcome), (pend_ok, pending) = results
        if not pend_ok:
            if claim_ok and isinstance(outcome, _Owned):
                await self._release_claim(draft, claim)
            pending.raiseException()
        if not claim_ok:
            await self._unpend_quietly(pending)
            outcome.raiseException()
        if isinstance(outcome, _Accepted):
            await self._unpend_quietly(pending)
            return await self._duplicate(outcome, stale_ms)
        owned: _Owned = outcome
        tail: list[Write] = []  # the updates' bookkeeping writes
        early: list[defer.Deferred[tuple[Message, list[Update]]]] = []

        def allocated(message: Message, members: str, claims: Early | None) -> None:
            # the fan-out needs only the message and the members of the allocation: it runs while
            # the message row is written
            early.append(defer.ensureDeferred(self._fan_out(message, _user_ids(members), stale_ms, tail, claims)))

        # test hook: with "append.stored" the writer dies after the row, before any step of the fan-out
        dies_before_fan_out = "append.stored" in self.crash_points
        try:
            row = await self._allocate(
                owned, (lambda *_: None) if dies_before_fan_out else allocated, claim_early=not dies_before_fan_out
            )
        except BaseException as e:
            if early:  # the seq is taken: what is not written now, the recovery writes
                await defer.DeferredList(early, consumeErrors=True)
            elif isinstance(e, NotFound):  # no seq taken: nothing to recover
                await self._release_claim(owned.draft, claim)
                await self._unpend_quietly(pending)
            raise
        self._checkpoint("append.stored")
        if early:
            message, updates = await early[0]
        else:
            message, updates = await self._fan_out(_message_of(row), _fanout_of(row), stale_ms, tail)
        # Everything the answer promises is stored. What is left is bookkeeping that the recovery redoes
        # if it is lost (dedupe keys learn their update_id, the user_state hint, fanout_done, the pending
        # row): it goes on after the answer.
        self._later([*tail, self._fanout_done_write(message), ("pend_delete", pending)])
        return Appended(message, updates, False)

    async def _duplicate(self, accepted: _Accepted, stale_ms: int) -> Appended:
        """The answer to a re-sent ``client_msg_id``: the first message. If the first send's fan-out
        is unfinished (its writer is still at it, or died and the sweep has not come yet), finish it
        first, as the sweep would: a retry that answers means every member's update is stored."""
        row = await self._ensure_message(accepted.chat_id, accepted.seq)
        if row is None:
            raise Unavailable("the first message with this client_msg_id is still being stored; retry")
        if not row["fanout_done"]:
            await self._finish_fan_out(row, stale_ms)
        return Appended(_message_of(row), [], True)

    async def _release_claim(self, draft: MessageDraft, claim: str) -> None:
        with contextlib.suppress(Unavailable):
            await self._lwt("res_release", (draft.sender_id, draft.client_msg_id, claim))

    async def _claim_message(self, draft: MessageDraft, claim: str, stale_ms: int) -> _Owned | _Accepted:
        key = (draft.sender_id, draft.client_msg_id)
        now = self._now_ms()
        params = (*key, draft.chat_id, draft.message_id, _message_draft_json(draft), claim, now)
        while True:
            r = await self._lwt("res_claim", params)
            if r.applied:
                return _Owned(draft, now, resumed=False)
            existing = r.row
            if r.applied is None:
                existing = await self._read_one("res_get", key, serial=True)
                if existing is None:
                    continue
                if existing["claim"] == claim:
                    return _Owned(draft, now, resumed=False)
            assert existing is not None
            if existing["seq"] is not None:
                return _Accepted(existing["chat_id"], existing["seq"])
            if now - (existing["claimed_at_ms"] or 0) < stale_ms:

                async def probe() -> _Accepted | bool | None:
                    row = await self._read_one("res_get", key, serial=True)
                    if row is None:
                        return False  # released (no such chat): claim it again
                    if row["seq"] is not None:
                        return _Accepted(row["chat_id"], row["seq"])
                    return None

                found = await self._wait_for(probe)
                if isinstance(found, _Accepted):
                    return found
                if found is False:
                    continue
                raise Unavailable("a message with this client_msg_id is being sent; retry")
            t = await self._lwt("res_takeover", (claim, now, *key, existing["claim"]))
            if t.applied:
                return _Owned(_message_draft_of(existing["draft"]), now, resumed=True)

    async def _allocate(
        self, owned: _Owned, allocated: Callable[[Message, str, Early | None], None], *, claim_early: bool = True
    ) -> Row:
        """Give the claimed draft its seq and store its row; answers the message row. When this call
        takes the seq (not a dead writer before it), ``allocated(message, members, early)`` learns it
        at once, before the row is written (``members``: those of the allocation, who get the
        fan-out; ``early``: see below).

        The first try guesses the chat's ``last_seq`` and ``members`` from what this process last
        read or wrote (no read); the LWT checks both, and when the guess is wrong its answer carries
        the current values for the next try. With ``claim_early``, the fan-out's dedupe keys for the
        guessed seq (``msg:<chat_id>:<seq>`` of each member) are claimed together with that first
        try, their claims naming the message: if the guess was right the fan-out goes on with them,
        else they are released (a claim naming another message than the key's is never waited for:
        see :meth:`_store_update`)."""
        draft = owned.draft
        chat_id = draft.chat_id
        early: dict[str, defer.Deferred[_Held | str]] = {}
        guessed = 0
        handed = False
        try:
            async with self._chat_locks.hold(chat_id):
                hint = None if owned.resumed else self._chat_hints.get(chat_id)
                row: Row | None
                if hint is not None:
                    row = {"last_seq": hint[0], "members": hint[1], "last_message": None}
                else:
                    row = await self._chat_row(chat_id, serial=owned.resumed)
                    if row is None:
                        raise NotFound("no such chat")
                ours = False
                while True:
                    if owned.resumed:  # the writer that died may have allocated already
                        seq = await self._allocated_seq(draft, row)
                        if seq is not None:
                            break
                    self._deadline(owned.claimed_at_ms)
                    last_seq = row["last_seq"] or 0
                    if last_seq and self._written_seq.get(chat_id, 0) < last_seq:
                        if await self._ensure_message(chat_id, last_seq) is None:
                            row = await self._chat_row(chat_id, serial=True) or row
                            continue
                    seq = last_seq + 1
                    members = row["members"]
                    if claim_early and not guessed and not owned.resumed:
                        guessed = seq
                        key = f"msg:{chat_id}:{seq}"
                        early = {
                            u: defer.ensureDeferred(self._claim_early(u, key, draft.message_id))
                            for u in _user_ids(members)
                        }
                    r = await self._lwt(
                        "chat_alloc",
                        (seq, _dumps(draft.accepted(seq).to_dict()), draft.sent_at_ms, chat_id, last_seq, members),
                    )
                    if r.applied:
                        row = {**row, "last_seq": seq}
                        self._note_chat(chat_id, seq, members)
                        ours = True
                        break
                    if r.applied is None or r.row is None:
                        fresh = await self._chat_row(chat_id, serial=True)
                        if fresh is None:
                            raise NotFound("no such chat")
                        row = fresh
                        if r.applied is None:  # ours may have landed (and another writer followed)
                            found = await self._allocated_seq(draft, fresh)
                            if found is not None:  # then at this try: a try after an unknown one reads first
                                seq, ours = found, True
                                break
                    else:  # the answer holds the current last_seq and members
                        row = {**row, **r.row}
                        self._note_chat(chat_id, row["last_seq"] or 0, row["members"])
                self._checkpoint("append.allocated")
                if ours:
                    fan_out = _user_ids(members)
                    usable = {u: d for u, d in early.items() if seq == guessed and u in fan_out}
                    self._release_early(chat_id, guessed, {u: d for u, d in early.items() if u not in usable})
                    handed = True
                    allocated(draft.accepted(seq), members, usable or None)
                if row["last_seq"] == seq:
                    return await self._store_message(draft.accepted(seq), row["members"])
        finally:
            if not handed:
                self._release_early(chat_id, guessed, early)
        stored = await self._ensure_message(chat_id, seq)
        if stored is None:
            raise Unavailable("the message is being stored; retry")
        return stored

    async def _claim_early(self, user_id: str, key: str, owner: str) -> _Held | str:
        """One try at claiming a fan-out's key while the seq in it is a guess: never waits, never
        takes over; answers the claim, or the token tried (the fan-out retries with it: the try
        may have been applied unseen). Never fails."""
        claim = f"{_token()}.{owner}"
        try:
            lo = self._next_update_id.get(user_id) or await self._hint(user_id) + 1
            now = self._now_ms()
            r = await self._lwt("key_claim", (user_id, key, claim, now, lo))
        except Exception:
            return claim
        return _Held(claim, now) if r.applied else claim

    def _release_early(self, chat_id: str, seq: int, early: Early) -> None:
        """Give back early claims that will not be used (in the background)."""
        if not early:
            return
        key = f"msg:{chat_id}:{seq}"

        async def release() -> None:
            for user_id, d in early.items():
                claim = await d
                token = claim.claim if isinstance(claim, _Held) else claim
                try:
                    await self._lwt("key_release", (user_id, key, token))
                except Exception as e:  # left to age: a claim naming another message is taken over at once
                    log.info("cassandra chat: early claim not released: {error}", error=e)

        self._spawn(release())

    async def _allocated_seq(self, draft: MessageDraft, chat_row: Row) -> int | None:
        """The seq a dead writer gave ``draft``, if any. ``chat_row`` was read at SERIAL."""
        last = json.loads(chat_row["last_message"]) if chat_row["last_message"] else None
        if last is not None and last["message_id"] == draft.message_id:
            return int(last["seq"])
        # once last_message moved on, the next allocation ensured the row of that message and its claim's seq
        res = await self._read_one("res_get", (draft.sender_id, draft.client_msg_id), serial=True)
        if res is not None and res["seq"] is not None and res["message_id"] == draft.message_id:
            return int(res["seq"])
        return None

    async def _store_message(self, message: Message, members_json: str) -> Row:
        """The row itself (first writer wins) and, alongside, the seq in the claim and the id index
        (a writer that dies between them leaves a row without those: whoever ensures the row
        before the next allocation writes them, see :meth:`_ensure_message`)."""
        done: list[Any] = await self._gather(
            [self._insert_message(message, members_json), self._write_many(self._index_writes(message))]
        )
        self._note_written(message.chat_id, message.seq)
        row: Row = done[0]
        return row

    @staticmethod
    def _index_writes(message: Message) -> list[Write]:
        return [
            ("res_set_seq", (message.seq, message.sender_id, message.client_msg_id)),
            ("by_id_insert", (message.chat_id, message.message_id, message.seq)),
        ]

    def _note_written(self, chat_id: str, seq: int) -> None:
        """Rows 1..seq of the chat exist, with their index."""
        if self._written_seq.get(chat_id, 0) < seq:
            if len(self._written_seq) >= 100_000:
                self._written_seq.clear()
            self._written_seq[chat_id] = seq

    async def _insert_message(self, message: Message, members_json: str) -> Row:
        chat_id, seq = message.chat_id, message.seq
        fanout_to = _dumps(_user_ids(members_json))
        params = (
            chat_id,
            self._bucket(seq),
            seq,
            message.message_id,
            message.sender_id,
            message.client_msg_id,
            message.text,
            message.reply_to,
            [_media_text(m) for m in message.media],
            message.sent_at_ms,
            message.edited_at_ms,
            message.deleted,
            _reactions_json(message.reactions),
            fanout_to,
        )
        while True:
            r = await self._lwt("msg_insert", params)
            if r.applied:
                row: Row | None = {
                    **dict(zip([c.strip() for c in _MESSAGE_COLUMNS.split(",")][:13], params[:13], strict=True)),
                    "version": 1,
                    "fanout_to": fanout_to,
                    "fanout_done": False,
                }
            elif r.applied is False and r.row is not None:
                row = r.row
            else:
                row = await self._message_row(chat_id, seq, serial=True)
            if row is not None:
                return row

    async def _message_row(self, chat_id: str, seq: int, *, serial: bool = False) -> Row | None:
        return await self._read_one("msg_get", (chat_id, self._bucket(seq), seq), serial=serial)

    async def _ensure_message(self, chat_id: str, seq: int) -> Row | None:
        """The row of message ``seq``, written from the chat's ``last_message`` if its writer died
        between the allocation and the row; with the seq in its claim and the id index (written
        here too unless this process knows them: its writer may have died before them). None if
        it is not there (not allocated yet)."""
        row = await self._message_row(chat_id, seq)
        if row is None:
            chat = await self._chat_row(chat_id, serial=True)
            if chat is not None and chat["last_seq"] == seq and chat["last_message"]:
                last = Message.from_dict(json.loads(chat["last_message"]))
                if last.seq == seq:
                    return await self._store_message(last, chat["members"])
            row = await self._message_row(chat_id, seq, serial=True)
            if row is None:
                return None
        if self._written_seq.get(chat_id, 0) < seq:
            await self._write_many(self._index_writes(_message_of(row)))
            self._note_written(chat_id, seq)
        return row

    async def _fan_out(
        self,
        message: Message,
        user_ids: Sequence[str],
        stale_ms: int,
        tail: list[Write] | None = None,
        early: Early | None = None,
    ) -> tuple[Message, list[Update]]:
        """``message.new`` to every member of the allocation's time, and the sender's receipts.
        ``tail``: see :meth:`_store_updates`; ``early``: see :meth:`_allocate`."""
        data = message.to_dict()
        key = f"msg:{message.chat_id}:{message.seq}"
        drafts = [
            UpdateDraft(u, MESSAGE_NEW, message.chat_id, message.sent_at_ms, data, dedupe_key=key) for u in user_ids
        ]
        updates, _ = await self._gather(
            [
                self._store_updates(None, drafts, stale_ms, tail, owner=message.message_id, early=early),
                self._bump_receipts(message.sender_id, message.chat_id, message.seq),
            ]
        )
        return message, updates

    async def _finish_fan_out(self, row: Row, stale_ms: int) -> None:
        """The fan-out of a stored message row whose writer may have stopped (idempotent)."""
        message, _ = await self._fan_out(_message_of(row), _fanout_of(row), stale_ms)
        await self._fanout_done(message)

    def _fanout_done_write(self, message: Message) -> Write:
        return ("msg_fanout_done", (message.chat_id, self._bucket(message.seq), message.seq))

    async def _fanout_done(self, message: Message) -> None:
        await self._write(*self._fanout_done_write(message))

    async def _bump_receipts(self, user_id: str, chat_id: str, seq: int) -> list[Update]:
        """Sending marks read up to the new message (receipts only move forward)."""
        while True:
            r = await self._lwt("uc_bump", (seq, seq, user_id, chat_id, seq, seq))
            if r.applied or (r.row is None and r.applied is False):
                return []
            if r.applied is None:
                continue
            assert r.row is not None
            if (r.row["last_read_seq"] or 0) >= seq:
                return []
            b = await self._lwt("uc_bump_read", (seq, user_id, chat_id, seq))
            if b.applied or (b.applied is False and (b.row is None or (b.row["last_read_seq"] or 0) >= seq)):
                return []

    async def get_message(self, chat_id: str, message_id: str) -> Message | None:
        ref = await self._read_one("by_id_get", (chat_id, message_id))
        if ref is None:
            return None
        row = await self._message_row(chat_id, ref["seq"])
        return _message_of(row) if row else None

    async def update_message(self, message: Message, expected_version: int, updates: list[UpdateDraft]) -> list[Update]:
        chat_id = message.chat_id
        ref = await self._read_one("by_id_get", (chat_id, message.message_id))
        row = await self._message_row(chat_id, ref["seq"]) if ref else None
        if row is None:
            raise NotFound("no such message")
        if row["version"] != expected_version:
            raise Conflict("the message changed; re-read it")
        seq = row["seq"]
        body = {"chat_id": chat_id, "seq": seq, "updates": [_update_draft_json(u) for u in updates]}
        pending = await self._pend(UPDATE_MESSAGE, body)
        op_id = pending[1]

        def params(row: Row, recent: str) -> Sequence[Any]:
            return (
                message.text,
                [_media_text(m) for m in message.media],
                _reactions_json(message.reactions),
                message.edited_at_ms,
                message.deleted,
                expected_version + 1,
                recent,
                chat_id,
                self._bucket(seq),
                seq,
                expected_version,
            )

        def retry_from(row: Row, current: Row | None) -> Row:
            if current is None:
                raise NotFound("no such message")
            if current["version"] != expected_version:
                raise Conflict("the message changed; re-read it")
            return {**row, **current}  # outcome unknown and not applied: try again

        try:
            await self._compare_and_set(
                "msg_update", row, op_id, params, lambda: self._message_row(chat_id, seq, serial=True), retry_from
            )
        except (NotFound, Conflict):
            await self._unpend_quietly(pending)
            raise
        self._checkpoint("op.applied")
        stored = await self._finish_update_message(chat_id, seq, op_id, updates)
        await self._unpend(pending)
        return stored

    async def _finish_update_message(
        self, chat_id: str, seq: int, op_id: str, updates: Sequence[UpdateDraft], stale_ms: int | None = None
    ) -> list[Update]:
        await self._follow_last_message(chat_id, seq)
        return await self._store_updates(op_id, updates, stale_ms)

    async def _follow_last_message(self, chat_id: str, seq: int) -> None:
        """If ``seq`` is the chat's last message, make ``last_message`` its stored state (a CAS
        loop on the old value, so racing edits settle on the newest)."""
        while True:
            chat = await self._chat_row(chat_id, serial=True)
            if chat is None or chat["last_seq"] != seq:
                return
            row = await self._message_row(chat_id, seq, serial=True)
            if row is None:
                return
            current = _dumps(_message_of(row).to_dict())
            if chat["last_message"] == current:
                return
            r = await self._lwt("chat_last_message", (current, chat_id, seq, chat["last_message"]))
            if r.applied:
                return

    async def history(self, chat_id: str, lo: int, hi: int) -> list[Message]:
        lo = max(lo, 1)
        if self._bucket(hi) - self._bucket(lo) > 1:  # maybe open-ended: stop at the chat's last message
            chat = await self._chat_row(chat_id)
            hi = min(hi, chat["last_seq"] or 0) if chat else 0
        buckets = self._buckets(lo, hi)
        pages = await self._gather(
            self._read("msg_range", (chat_id, b, max(lo, b * self._bucket_size), hi)) for b in reversed(buckets)
        )
        return [_message_of(r) for page in pages for r in page]

    # -- receipts ------------------------------------------------------------------------------
    async def _uc_row(self, user_id: str, chat_id: str, *, serial: bool = False) -> Row | None:
        return await self._read_one("uc_get", (user_id, chat_id), serial=serial)

    async def get_receipts(self, chat_id: str, user_id: str) -> Receipts | None:
        row = await self._uc_row(user_id, chat_id)
        if row is None:
            return None
        return Receipts(row["last_delivered_seq"] or 0, row["last_read_seq"] or 0)

    async def set_receipts(
        self, chat_id: str, user_id: str, new: Receipts, expected: Receipts, updates: list[UpdateDraft]
    ) -> list[Update]:
        row = await self._uc_row(user_id, chat_id)
        if row is None:
            raise NotFound("not a member of the chat")
        if Receipts(row["last_delivered_seq"] or 0, row["last_read_seq"] or 0) != expected:
            raise Conflict("the receipts changed; re-read them")
        body = {"chat_id": chat_id, "user_id": user_id, "updates": [_update_draft_json(u) for u in updates]}
        pending = await self._pend(SET_RECEIPTS, body)
        op_id = pending[1]

        def params(row: Row, recent: str) -> Sequence[Any]:
            return (
                new.last_delivered_seq,
                new.last_read_seq,
                recent,
                user_id,
                chat_id,
                expected.last_delivered_seq,
                expected.last_read_seq,
                row["recent_ops"],
            )

        def retry_from(row: Row, current: Row | None) -> Row:
            if current is None:
                raise NotFound("not a member of the chat")
            if Receipts(current["last_delivered_seq"] or 0, current["last_read_seq"] or 0) != expected:
                raise Conflict("the receipts changed; re-read them")
            return {**row, **current}  # same receipts, another op id list: try again

        try:
            await self._compare_and_set(
                "uc_cas", row, op_id, params, lambda: self._uc_row(user_id, chat_id, serial=True), retry_from
            )
        except (NotFound, Conflict):
            await self._unpend_quietly(pending)
            raise
        self._checkpoint("op.applied")
        stored = await self._store_updates(op_id, updates)
        await self._unpend(pending)
        return stored

    # -- update stream -------------------------------------------------------------------------
    async def append_updates(self, updates: list[UpdateDraft]) -> list[Update]:
        if not updates:
            return []
        pending = await self._pend(APPEND_UPDATES, {"updates": [_update_draft_json(u) for u in updates]})
        stored = await self._store_updates(pending[1], updates)
        await self._unpend(pending)
        return stored

    async def get_updates(self, user_id: str, lo: int, hi: int) -> list[Update]:
        lo = max(lo, 1)
        if self._bucket(hi) - self._bucket(lo) > 1:  # maybe open-ended: stop at the user's last update
            hi = min(hi, await self._tail(user_id))
        buckets = self._buckets(lo, hi)
        pages = await self._gather(self._read("upd_range", (user_id, b, lo, hi)) for b in buckets)
        return [_update_of(r) for page in pages for r in page]

    async def last_update_id(self, user_id: str) -> int:
        return await self._tail(user_id)

    # -- per-member settings -----------------------------------------------------------------
    async def set_mute(self, chat_id: str, user_id: str, until_ms: int | None) -> None:
        if until_ms is None:
            await self._write("mute_delete", (chat_id, user_id))
        else:
            await self._write("mute_set", (chat_id, user_id, until_ms))

    async def mutes(self, chat_id: str) -> dict[str, int]:
        return {r["user_id"]: int(r["until_ms"]) for r in await self._read("mute_list", (chat_id,))}

    async def _hint(self, user_id: str) -> int:
        row = await self._read_one("state_get", (user_id,))
        return int(row["last_update_id"]) if row and row["last_update_id"] else 0

    async def _tail(self, user_id: str, *, serial: bool = False) -> int:
        """The user's last update id: from the hint's bucket upward (ids have no gaps)."""
        last = await self._hint(user_id)
        b = self._bucket(last)
        while True:
            row = await self._read_one("upd_tail", (user_id, b), serial=serial)
            if row is None:
                return last
            last = max(last, int(row["update_id"]))
            if last < (b + 1) * self._bucket_size - 1:
                return last
            b += 1

    async def _store_updates(
        self,
        op_id: str | None,
        drafts: Sequence[UpdateDraft],
        stale_ms: int | None = None,
        tail: list[Write] | None = None,
        *,
        owner: str | None = None,
        early: Early | None = None,
    ) -> list[Update]:
        """Each draft under its dedupe key (or ``~op:<op_id>:<i>``); one user's in list order.
        ``stale_ms``: age of a claim without result that this call may take over. ``tail``: if
        given, the bookkeeping writes that follow each stored update (the key learns its
        ``update_id``; the user_state hint) are added to it instead of being awaited.
        ``owner``: the message whose fan-out this is (its claims name it); ``early``: claims
        already tried for some users (see :meth:`_allocate`)."""
        stale = self._grace_ms if stale_ms is None else stale_ms
        per_user: dict[str, list[tuple[int, UpdateDraft, str]]] = {}
        for i, d in enumerate(drafts):
            key = d.dedupe_key if d.dedupe_key is not None else f"~op:{op_id}:{i}"
            per_user.setdefault(d.user_id, []).append((i, d, key))
        out: list[Update | None] = [None] * len(drafts)

        async def one_user(items: list[tuple[int, UpdateDraft, str]]) -> None:
            for i, d, key in items:
                claim = await early[d.user_id] if early and d.user_id in early else None
                out[i] = await self._store_update(d, key, stale, tail, owner, claim)

        await self._gather(one_user(items) for items in per_user.values())
        return [u for u in out if u is not None]

    async def _store_update(
        self,
        draft: UpdateDraft,
        key: str,
        stale_ms: int,
        tail: list[Write] | None = None,
        owner: str | None = None,
        early: _Held | str | None = None,
    ) -> Update:
        """Store ``draft`` under the dedupe key ``key``: claim the key, then allocate the id.

        A claim without result is waited for while it is fresh (its holder is at work), adopted
        or taken over when stale. Claims of a fan-out name its message (``owner``): a claim
        naming another message was taken by a send that guessed this key's seq and lost it, which
        never stores anything under it, so it is taken over at once. ``early``: the claim already
        held, or the token of a try whose outcome is not known (an existing claim with that token
        is ours)."""
        user_id = draft.user_id
        if isinstance(early, _Held):
            claim, now = early.claim, early.claimed_at_ms
        else:
            claim = early or (_token() if owner is None else f"{_token()}.{owner}")
            claimed = await self._claim_key(user_id, key, claim, stale_ms, owner)
            if isinstance(claimed, Update):
                return claimed
            now = claimed
        return await self._insert_update(draft, key, claim, now, tail)

    async def _claim_key(self, user_id: str, key: str, claim: str, stale_ms: int, owner: str | None) -> int | Update:
        """Take the claim of ``(user_id, key)`` with the token ``claim``: answers when it was taken,
        or the update stored under the key already."""
        lo = self._next_update_id.get(user_id) or await self._hint(user_id) + 1
        while True:
            now = self._now_ms()
            r = await self._lwt("key_claim", (user_id, key, claim, now, lo))
            if r.applied:
                return now
            existing = r.row
            if r.applied is None:
                existing = await self._read_one("key_get", (user_id, key), serial=True)
                if existing is None:
                    continue
            assert existing is not None
            if existing["claim"] == claim:  # ours: a try whose answer was lost
                return int(existing["claimed_at_ms"] or now)
            if existing["update_id"] is not None:
                return await self._update_at(user_id, existing["update_id"])
            theirs = _owner_of(existing["claim"])
            lost_guess = owner is not None and theirs is not None and theirs != owner
            if not lost_guess:
                # held by a live writer, or one that died after storing the update (a re-send finishing
                # the fan-out of a crashed send meets that): look for the update before anything else
                found = await self._find_key(user_id, key, existing["lo"] or 1)
                if found is not None:
                    await self._write("key_set", (found.update_id, user_id, key))
                    return found
                if now - (existing["claimed_at_ms"] or 0) < stale_ms:

                    async def probe() -> int | None:
                        row = await self._read_one("key_get", (user_id, key), serial=True)
                        return None if row is None or row["update_id"] is None else int(row["update_id"])

                    done = await self._wait_for(probe)
                    if done is None:
                        raise Unavailable("an update with this dedupe key is being stored; retry")
                    return await self._update_at(user_id, done)
            t = await self._lwt("key_takeover", (claim, now, lo, user_id, key, existing["claim"]))
            if t.applied:
                return now

    async def _insert_update(
        self, draft: UpdateDraft, key: str, claim: str, claimed_at: int, tail: list[Write] | None
    ) -> Update:
        """Allocate the user's next ``update_id`` for ``draft``, whose key this call has claimed."""
        user_id = draft.user_id
        data = _dumps(draft.data)
        async with self._user_locks.hold(user_id):
            update_id = self._next_update_id.get(user_id) or await self._tail(user_id) + 1
            missed = 0
            while True:
                self._deadline(claimed_at)
                r = await self._lwt(
                    "upd_insert",
                    (
                        user_id,
                        self._bucket(update_id),
                        update_id,
                        draft.type,
                        draft.chat_id,
                        draft.at_ms,
                        data,
                        key,
                        claim,
                    ),
                )
                if r.applied:
                    stored = Update(user_id, update_id, draft.type, draft.chat_id, draft.at_ms, json.loads(data))
                    break
                taken = r.row
                if r.applied is None:
                    taken = await self._read_one("upd_get", (user_id, self._bucket(update_id), update_id), serial=True)
                    if taken is None:
                        continue
                assert taken is not None
                if taken["dedupe_key"] == key:  # ours, or the dead claimant's write for this key
                    stored = _update_of({**taken, "user_id": user_id, "update_id": update_id})
                    break
                missed += 1
                update_id = update_id + 1 if missed < 2 else max(update_id + 1, await self._tail(user_id) + 1)
            self._next_update_id[user_id] = update_id + 1
            if len(self._next_update_id) > 100_000:
                self._next_update_id.clear()
        self._checkpoint("update.allocated")
        writes: list[Write] = [("key_set", (update_id, user_id, key)), ("state_set", (update_id, update_id, user_id))]
        if tail is not None:
            tail.extend(writes)
        else:
            await self._write_many(writes)
        return stored

    async def _update_at(self, user_id: str, update_id: int) -> Update:
        row = await self._read_one("upd_get", (user_id, self._bucket(update_id), update_id))
        if row is None:
            row = await self._read_one("upd_get", (user_id, self._bucket(update_id), update_id), serial=True)
        if row is None:
            raise Unavailable("update not readable yet; retry")
        return _update_of(row)

    async def _find_key(self, user_id: str, key: str, lo: int) -> Update | None:
        """The update stored under ``key`` at ``lo`` or later (a dead claimant's work), if any."""
        last = await self._tail(user_id, serial=True)
        for b in self._buckets(lo, last):
            rows = await self._read("upd_keys_from", (user_id, b, max(lo, b * self._bucket_size)), serial=True)
            for r in rows:
                if r["dedupe_key"] == key:
                    return await self._update_at(user_id, r["update_id"])
        return None

    # -- recovery ------------------------------------------------------------------------------
    def _sweep_once(self) -> defer.Deferred[None]:
        async def sweep() -> None:
            try:
                await self.recover()
            except Exception as e:
                log.warn("cassandra chat recovery failed: {error}", error=e)
            finally:
                self._sweeping = None

        self._sweeping = defer.ensureDeferred(sweep())
        return self._sweeping

    async def recover(self, limit: int = 100, *, min_age_s: float | None = None) -> int:
        """Finish at most ``limit`` pending operations older than ``min_age_s`` (default
        ``grace_s``); answers how many were handled (finished or dropped)."""
        if self._recovering:
            return 0
        self._recovering = True
        try:
            age_ms = self._grace_ms if min_age_s is None else int(min_age_s * 1000)
            handled = 0
            for shard in range(SHARDS):
                if handled >= limit:
                    break
                rows = await self._read("pend_scan", (shard, max(limit, 500)))
                for row in rows:
                    if handled >= limit:
                        break
                    if self._now_ms() - (row["created_at_ms"] or 0) < age_ms:
                        continue
                    try:
                        await self._recover_one(row, age_ms)
                    except Unavailable as e:
                        if self.breaker.state != CLOSED:
                            raise
                        log.info("cassandra chat recovery of {op_id} postponed: {error}", op_id=row["op_id"], error=e)
                        continue
                    except Exception:
                        log.failure("cassandra chat recovery of {op_id}", op_id=row["op_id"])
                        continue
                    await self._unpend((shard, row["op_id"]))
                    handled += 1
            return handled
        finally:
            self._recovering = False

    async def _recover_one(self, row: Row, age_ms: int) -> None:
        kind, op_id = row["kind"], row["op_id"]
        body = json.loads(row["body"])
        updates = [_update_draft_of(u) for u in body.get("updates", [])]
        if kind == APPEND:
            await self._recover_append(_message_draft_of(body["draft"]), age_ms)
        elif kind == CREATE_CHAT:
            chat = await self._chat_row(body["chat_id"], serial=True)
            if chat is not None and _recent_find(chat["recent_ops"], op_id)[0]:
                current = {m.user_id for m in _members_of(chat["members"])}
                founders = [Member(u, at) for u, at in body["members"] if u in current]  # who left keeps no row
                await self._finish_create_chat(chat["chat_id"], founders, op_id, updates, age_ms)
        elif kind == UPDATE_CHAT:
            chat = await self._chat_row(body["chat_id"], serial=True)
            found, last_seq = _recent_find(chat["recent_ops"] if chat else None, op_id)
            if chat is not None and found:
                current = {m.user_id for m in _members_of(chat["members"])}
                added = [Member(u, at) for u, at in body["added"] if u in current]
                removed = [u for u in body["removed"] if u not in current]
                await self._finish_update_chat(chat["chat_id"], body["version"], int(last_seq or 0), added, removed)
                await self._store_updates(op_id, updates, age_ms)
        elif kind == UPDATE_MESSAGE:
            message = await self._message_row(body["chat_id"], body["seq"], serial=True)
            if message is not None and _recent_find(message["recent_ops"], op_id)[0]:
                await self._finish_update_message(body["chat_id"], body["seq"], op_id, updates, age_ms)
        elif kind == SET_RECEIPTS:
            uc = await self._uc_row(body["user_id"], body["chat_id"], serial=True)
            if uc is not None and _recent_find(uc["recent_ops"], op_id)[0]:
                await self._store_updates(op_id, updates, age_ms)
        elif kind == APPEND_UPDATES:
            await self._store_updates(op_id, updates, age_ms)
        else:
            log.warn("unknown pending operation kind {kind}", kind=kind)

    async def _recover_append(self, draft: MessageDraft, age_ms: int) -> None:
        res = await self._read_one("res_get", (draft.sender_id, draft.client_msg_id), serial=True)
        if res is None or res["message_id"] != draft.message_id:
            return  # never claimed, released (no such chat), or a duplicate of an earlier message
        if res["seq"] is None:
            await self._append(draft, age_ms)  # takes the stale claim over and finishes it
            return
        row = await self._ensure_message(res["chat_id"], res["seq"])
        if row is not None and not row["fanout_done"]:
            await self._finish_fan_out(row, age_ms)

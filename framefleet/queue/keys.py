"""The Redis key layout of one queue: every key framefleet writes, in one place.

All keys of a queue share the hash tag `{<queue>}` so that a queue lives in one Redis
Cluster slot and every Lua script touches a single slot. With prefix `ff` and queue
`videos` the keys are:

| key                     | type | holds                                                   |
|-------------------------|------|---------------------------------------------------------|
| ff:{videos}:item:<id>   | hash | one item: uri, pri, seq, state, epoch, owner, ...       |
| ff:{videos}:chunks:<id> | set  | indices of checkpointed chunks (while not done)         |
| ff:{videos}:events:<id> | list | its history, JSON, oldest first (20 kept)               |
| ff:{videos}:queued      | zset | ids ready to claim; score (9 - priority) * 2^44 + seq   |
| ff:{videos}:delayed     | zset | ids waiting for a retry; score = ready time (ms)        |
| ff:{videos}:leased      | zset | ids under a lease; score = lease deadline (ms)          |
| ff:{videos}:done        | zset | finished ids; score = done time (ms)                    |
| ff:{videos}:dead        | zset | dead letters; score = time of death (ms)                |
| ff:{videos}:signal      | list | wake-up tokens for blocked claimers (BLPOP)             |
| ff:{videos}:inbox       | list | JSON items pushed by plain Redis clients (LPUSH)        |
| ff:{videos}:rejected    | list | inbox entries refused, as JSON {raw, reason, at}        |
| ff:{videos}:meta        | hash | paused, seq (FIFO), epoch (claims), swept_at, grace_until|
| ff:{videos}:stats       | hash | monotonic counters (`*_total`)                          |
| ff:{videos}:workers     | zset | worker name -> time of its last heartbeat (ms)          |
| ff:{videos}:held:<w>    | set  | the ids worker w leases now (its lease index)           |
| ff:{videos}:holders     | set  | the workers whose held set is not empty                 |
| ff:{videos}:solo        | hash | worker -> the suspect item it holds (it gets no other)  |
| ff:{videos}:nonces      | hash | worker -> nonce of its last claim (replays a retried one)|
| ff:{videos}:worker_info | hash | worker -> what it says of itself, JSON (node, pid, host) |
| ff:{videos}:fleets      | hash | Ray driver generation -> the coordinator that runs it   |
| ff:{videos}:retired     | zset | worker name or name prefix -> when its fleet ended (ms) |
| ff:{videos}:deadc:<cls> | zset | the dead letters of one class; score = time of death    |
| ff:{videos}:dead_classes| set  | the classes that have dead letters now                  |
| ff:{videos}:failed      | hash | failure class -> failures counted (retried or not)      |
| ff:{videos}:busy        | hash | decode, inference:<device> -> busy ms (checkpointed)    |
| ff:{videos}:revs        | hash | id -> newest revision of a forced id (kept for good)     |
| ff:{videos}:hist:<name> | hash | a histogram (metrics.py): bucket -> count, sum ms, count |
| ff:{videos}:leader      | str  | the id of the coordinator holding the leader lease (TTL) |
| ff:{videos}:health      | str  | the leader's last health report, JSON (TTL)             |
| ff:{videos}:audit       | list | operators' actions, JSON, newest first (capped)         |
| ff:{videos}:outcomes    | strm | each end: done (result), dead (class, reason); ~100k |
| ff:{videos}:webhook_failures | list | failed webhook attempts, JSON, newest first (100) |

Item hash fields: `uri`, `pri` (0-9), `seq`, `state` (queued|delayed|leased|done|dead),
`created` (ms), optional `etag`, `size`, `meta` (JSON); once used: `attempts`,
`deliveries` (charged lapses in a row: the poison count), `interrupted` (leases that ended
without their holder's word), `solo`/`solo_since`/`crash_mark` (a suspect, retried alone),
`claims`, `epoch` (a claim counter), `token` (the fence
of the current lease), `owner`, `lease_until`, `claimed_at`,
`ready_at`, `chunks_done`, `chunks_total`, `pin` (what the checkpoints were made from),
`last_error`, `dead_reason`, `release_reason`,
`result`, `done_at`, `dead_at`.

Every item id is in exactly one of queued/delayed/leased/done/dead, and that zset agrees
with the hash's `state`: the Lua scripts keep both in step atomically. No id is empty, so
queued never holds the member '': each script that writes starts with a ZADD XX or a ZREM
of it, which change nothing, to say whether it runs when the server is over its maxmemory
(lua/_common.lua: refuse_when_full, run_when_full). The Lua scripts
receive the prefix `ff:{videos}:` as KEYS[1] and build these names themselves
(lua/_common.lua); this module is the Python side of the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("queued", "delayed", "leased", "done", "dead")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    queue: str

    @property
    def base(self) -> str:
        """The common prefix, hash tag included: KEYS[1] of every script."""
        return f"{self.prefix}:{{{self.queue}}}:"

    def item(self, item_id: str) -> str:
        return f"{self.base}item:{item_id}"

    def chunks(self, item_id: str) -> str:
        return f"{self.base}chunks:{item_id}"

    def events(self, item_id: str) -> str:
        return f"{self.base}events:{item_id}"

    def state(self, state: str) -> str:
        """The zset holding the ids in `state` (one of STATES)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return f"{self.base}{state}"

    @property
    def signal(self) -> str:
        return f"{self.base}signal"

    @property
    def inbox(self) -> str:
        return f"{self.base}inbox"

    @property
    def rejected(self) -> str:
        return f"{self.base}rejected"

    @property
    def meta(self) -> str:
        return f"{self.base}meta"

    @property
    def stats(self) -> str:
        return f"{self.base}stats"

    @property
    def workers(self) -> str:
        return f"{self.base}workers"

    def held(self, worker: str) -> str:
        return f"{self.base}held:{worker}"

    @property
    def holders(self) -> str:
        return f"{self.base}holders"

    @property
    def solo(self) -> str:
        return f"{self.base}solo"

    @property
    def nonces(self) -> str:
        return f"{self.base}nonces"

    @property
    def worker_info(self) -> str:
        return f"{self.base}worker_info"

    @property
    def fleets(self) -> str:
        return f"{self.base}fleets"

    @property
    def retired(self) -> str:
        return f"{self.base}retired"

    def dead_class(self, cls: str) -> str:
        return f"{self.base}deadc:{cls}"

    @property
    def dead_classes(self) -> str:
        return f"{self.base}dead_classes"

    @property
    def failed(self) -> str:
        return f"{self.base}failed"

    @property
    def busy(self) -> str:
        return f"{self.base}busy"

    @property
    def revs(self) -> str:
        return f"{self.base}revs"

    def histogram(self, name: str) -> str:
        return f"{self.base}hist:{name}"

    @property
    def leader(self) -> str:
        return f"{self.base}leader"

    @property
    def health(self) -> str:
        return f"{self.base}health"

    @property
    def audit(self) -> str:
        return f"{self.base}audit"

    @property
    def outcomes(self) -> str:
        """The outcomes stream: what enqueuers read (XREAD, XREADGROUP) to hear of each end."""
        return f"{self.base}outcomes"

    @property
    def webhook_failures(self) -> str:
        return f"{self.base}webhook_failures"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this queue."""
        return f"{self.prefix}:{{{self.queue}}}:*"

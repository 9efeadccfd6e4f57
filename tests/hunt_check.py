"""The fault hunt's judge: what the bots saw, against what the chat promises.

Each check returns a list of failures, one short line each with an excerpt;
`Verdict` gathers them under the promise they break. Each bot is in the
lobby and one or two more rooms, for its whole life, and every promise is
held per room (ids are only comparable within a room: the lobby's and the
other rooms' come from two streams). The promises, from the README's
section on several servers:

1. every accepted message (its sender got the echo) reaches every member of
   its room online throughout its life exactly once; a user's streams, each
   joining every room with the last id it saw there, count as one life;
2. the ids each user receives in a room only increase, and an id of a room
   means one message;
3. every online user's view of who is in each of its rooms (and of who is
   typing there) is right once things settle;
4. each room's history holds every accepted message of it once, in order,
   and nothing the server refused with NOT_SENT;
5. servers stopped with SIGTERM exit 0 and leave no name claimed;
6. (the client's side) each line is answered, each join confirmed, in time.
"""

from collections import Counter

EXCERPT_ITEMS = 4  # examples shown per failure

PROMISES = {
    1: "every accepted message reaches every member of its room online throughout its life, "
    "exactly once",
    2: "the ids each client receives in a room only increase; one id is one message",
    3: "every client's view of who is in each of its rooms (and typing) is right after settling",
    4: "each room's history holds its accepted messages once, in order, and nothing NOT_SENT",
    5: "servers stopped with SIGTERM exit 0 and leave no name claimed",
    6: "each line is answered and each join confirmed within a deadline; no stray notices",
}


def id_key(message_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in message_id.split("-"))


def accepted(bots) -> list:
    """Every attempt whose sender got the echo, in id order."""
    return sorted(
        (a for bot in bots for a in bot.attempts if a.outcome == "echo"), key=lambda a: id_key(a.id)
    )


def _excerpt(items) -> str:
    items = list(items)
    more = f" (+{len(items) - EXCERPT_ITEMS} more)" if len(items) > EXCERPT_ITEMS else ""
    return "; ".join(str(item) for item in items[:EXCERPT_ITEMS]) + more


# -- 1. delivery ------------------------------------------------------------------------


def owed(bot, messages) -> list:
    """The accepted messages `bot` must have: of its rooms, sent after its first join and,
    if it is offline at the end, no later than the last message it received there."""
    if bot.first_join_t is None:
        return []
    last = {r.room: id_key(r.id) for r in bot.received}
    return [
        a for a in messages
        if a.room in bot.rooms and a.sent_t > bot.first_join_t
        and (bot.online or id_key(a.id) <= last.get(a.room, (0, 0)))
    ]  # fmt: skip


def missing(bot, messages) -> list:
    got = {(r.room, r.id) for r in bot.received}
    return [a for a in owed(bot, messages) if (a.room, a.id) not in got]


def check_delivery(bots, messages) -> list[str]:
    failures = []
    for bot in bots:
        gaps = missing(bot, messages)
        if gaps:
            failures.append(
                f"{bot.name} missed {len(gaps)} of {len(owed(bot, messages))}: "
                + _excerpt(f"{a.text} #{a.room} id {a.id} sent {a.sent_t:.1f} s" for a in gaps)
            )
        twice = [i for i, n in Counter((r.room, r.id) for r in bot.received).items() if n > 1]
        if twice:
            failures.append(f"{bot.name} got {len(twice)} ids more than once: {_excerpt(twice)}")
    return failures


# -- 2. order and identity ---------------------------------------------------------------


def check_order(bots) -> list[str]:
    failures, meaning = [], {}
    for bot in bots:
        for room in bot.rooms:
            seen = [r for r in bot.received if r.room == room]
            for before, after in zip(seen, seen[1:], strict=False):
                if id_key(after.id) <= id_key(before.id):
                    failures.append(
                        f"{bot.name} got {after.text} #{room} id {after.id} (stream "
                        f"{after.session}{', replay' if after.replay else ''}, {after.t:.1f} s) "
                        f"after {before.text} id {before.id} (stream {before.session}, "
                        f"{before.t:.1f} s)"
                    )
                    break
        strays = sorted({r.room for r in bot.received} - set(bot.rooms))
        if strays:
            failures.append(f"{bot.name} got messages of rooms it is not in: {strays}")
        for r in bot.received:
            said = (r.username, r.text)
            if meaning.setdefault((r.room, r.id), said) != said:
                failures.append(
                    f"#{r.room} id {r.id} is {meaning[(r.room, r.id)]} for one client and "
                    f"{said} for {bot.name}"
                )
    return failures


# -- 3. presence ---------------------------------------------------------------------------


def presence_errors(bots) -> list[str]:
    failures = []
    for bot in bots:
        if not bot.online:
            continue
        for room in bot.rooms:
            truth = {b.name for b in bots if b.online and room in b.rooms}
            with bot._lock:
                view = set(bot.view.get(room, ()))
                typing = set(bot.typing_view.get(room, ()))
                address = bot.sessions[-1].address
            if view != truth:
                failures.append(
                    f"{bot.name} (on {address}) shows {sorted(view - truth)} in #{room} who are "
                    f"not and misses {sorted(truth - view)}"
                )
            if typing:
                failures.append(f"{bot.name} still shows {sorted(typing)} typing in #{room}")
    return failures


# -- 4. history ----------------------------------------------------------------------------


def check_history(entries, bots, messages, room: str) -> list[str]:
    """`entries`: (id, fields) from XRANGE of `room`'s history stream, oldest first."""
    failures = []
    messages = [a for a in messages if a.room == room]
    ids = [entry_id for entry_id, _ in entries]
    if ids != sorted(ids, key=id_key):
        failures.append("the stream's ids are out of order")
    oldest = id_key(ids[0]) if ids else (0, 0)
    copies = Counter(fields.get("message") for _, fields in entries)
    stored = {fields.get("message"): entry_id for entry_id, fields in entries}
    kept = [a for a in messages if id_key(a.id) >= oldest]  # older ones may be trimmed
    absent = [a for a in kept if a.text not in stored]
    moved = [a for a in kept if a.text in stored and stored[a.text] != a.id]
    doubled = [a for a in kept if copies[a.text] > 1]
    for what, items in (
        ("missing", absent),
        ("stored under another id", moved),
        ("stored more than once", doubled),
    ):
        if items:
            failures.append(
                f"#{room}: {len(items)} of {len(kept)} accepted messages {what}: "
                + _excerpt(f"{a.text} id {a.id} -> {stored.get(a.text)}" for a in items)
            )
    refused = {a.text for bot in bots for a in bot.attempts if a.outcome == "not sent"}
    leaked = sorted(refused & set(stored))
    if leaked:
        failures.append(
            f"{len(leaked)} messages refused with NOT_SENT are stored: "
            + _excerpt(f"{t} id {stored[t]}" for t in leaked)
        )
    return failures


# -- 6. the client's own view of its lines ------------------------------------------------


def check_lines(bots) -> list[str]:
    failures = []
    for bot in bots:
        if bot.error is not None:
            failures.append(f"{bot.name} stopped: {bot.error!r}")
        failures += [f"{bot.name}: {problem}" for problem in bot.problems]
    return failures


class Verdict:
    """Failures by promise; `message()` is the test's assertion message."""

    def __init__(self, seed: int, replay: str):
        self.seed, self.replay = seed, replay
        self.broken: dict[int, list[str]] = {}

    def add(self, promise: int, failures: list[str]) -> None:
        if failures:
            self.broken.setdefault(promise, []).extend(failures)

    def __bool__(self) -> bool:
        return not self.broken

    def message(self, timeline: list[str], logs: str, stats: str) -> str:
        lines = [f"the fault hunt failed with seed {self.seed}; replay: {self.replay}", stats]
        for promise, failures in sorted(self.broken.items()):
            lines.append(f"promise {promise} broken ({PROMISES[promise]}):")
            lines += [f"  - {failure}" for failure in failures[: EXCERPT_ITEMS * 2]]
        lines += ["faults (seconds since start):", *[f"  {t}" for t in timeline[-25:]]]
        lines += ["end of the servers' logs:", logs[-6000:]]
        return "\n".join(lines)

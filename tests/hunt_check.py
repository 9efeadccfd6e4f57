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
6. (the client's side) each line is answered, each join confirmed, in time;
7. no name is online twice: an impostor's join never succeeds while the
   bot of that name is online (on a server that was not frozen);
8. no direct message is echoed and lost: one echoed reaches its recipient
   (unless the recipient's stream ended right after), and none arrives twice.
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
    7: "no name is online twice",
    8: "no direct message is echoed and lost, nor delivered twice",
}
ONLINE_MARGIN_S = 2.0  # a session counts as online this long inside its own ends
LOSS_GRACE_S = 5.0  # a recipient's stream that ended this soon after an echo may lose it
WIPE_WINDOW_S = 10.0  # messages this soon before Redis is emptied may be lost to history
FROZEN_GRACE_S = 15.0  # a frozen server's users are reaped, and may be claimed, within this


def id_key(message_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in message_id.split("-"))


def accepted(bots) -> list:
    """Every room message whose sender got the echo, in id order."""
    echoed = (a for bot in bots for a in bot.attempts if a.outcome == "echo" and not a.to)
    return sorted(echoed, key=lambda a: id_key(a.id))


def _excerpt(items) -> str:
    items = list(items)
    more = f" (+{len(items) - EXCERPT_ITEMS} more)" if len(items) > EXCERPT_ITEMS else ""
    return "; ".join(str(item) for item in items[:EXCERPT_ITEMS]) + more


# -- 1. delivery ------------------------------------------------------------------------


def owed(bot, messages, wiped=()) -> list:
    """The accepted messages `bot` must have: of its rooms, sent after its first join and,
    if it is offline at the end, no later than the last message it received there. One
    sent just before Redis was emptied (`wiped`: when) is owed only to a bot online
    then: history lost it, so a bot between streams cannot resume it."""
    if bot.first_join_t is None:
        return []
    last = {r.room: id_key(r.id) for r in bot.received}

    def lost_to_history(a) -> bool:
        near = any(t - WIPE_WINDOW_S <= a.sent_t <= t for t in wiped)
        return near and _online_at(bot, a.sent_t + 1.0, 1.0) is None

    return [
        a for a in messages
        if a.room in bot.rooms and a.sent_t > bot.first_join_t
        and (bot.online or id_key(a.id) <= last.get(a.room, (0, 0)))
        and not lost_to_history(a)
    ]  # fmt: skip


def missing(bot, messages, wiped=()) -> list:
    got = {(r.room, r.id) for r in bot.received}
    return [a for a in owed(bot, messages, wiped) if (a.room, a.id) not in got]


def check_delivery(bots, messages, wiped=()) -> list[str]:
    failures = []
    for bot in bots:
        gaps = missing(bot, messages, wiped)
        if gaps:
            failures.append(
                f"{bot.name} missed {len(gaps)} of {len(owed(bot, messages, wiped))}: "
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


def check_history(entries, bots, messages, room: str, wiped=()) -> list[str]:
    """`entries`: (id, fields) from XRANGE of `room`'s history stream, oldest first.

    Redis emptied (`wiped`: when) took the history before it with it: a message
    sent before the last time may be absent (if there, it must be right)."""
    failures = []
    messages = [a for a in messages if a.room == room]
    ids = [entry_id for entry_id, _ in entries]
    if ids != sorted(ids, key=id_key):
        failures.append("the stream's ids are out of order")
    oldest = id_key(ids[0]) if ids else (0, 0)
    copies = Counter(fields.get("message") for _, fields in entries)
    stored = {fields.get("message"): entry_id for entry_id, fields in entries}
    kept = [a for a in messages if id_key(a.id) >= oldest]  # older ones may be trimmed
    last_wipe = max(wiped, default=-1.0)
    absent = [a for a in kept if a.text not in stored and a.sent_t > last_wipe]
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
    refused = {a.text for bot in bots for a in bot.attempts if a.outcome == "not sent" and not a.to}
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


# -- 7. names -----------------------------------------------------------------------------


def _online_at(bot, t: float, margin: float):
    """The session of `bot` joined and open from `t - margin` to `t + margin`, if any."""
    for session in bot.sessions:
        joined, ended = session.joined_t, session.ended_t
        if joined is not None and joined < t - margin and (ended is None or ended > t + margin):
            return session
    return None


def check_names(bots, frozen) -> list[str]:
    """`frozen`: (address, from t, to t) of servers SIGSTOPped (their users are reaped)."""
    by_name, failures = {bot.name: bot for bot in bots}, []
    for bot in bots:
        for t, name, address in bot.impostors:
            real = by_name.get(name)
            session = real and _online_at(real, t, ONLINE_MARGIN_S)
            if not session:
                continue
            spans = [f for f in frozen if f[0] == session.address]
            if not any(start < t < end + FROZEN_GRACE_S for _, start, end in spans):
                failures.append(
                    f"{bot.name} joined as {name} on {address} at {t:.1f} s while {name} was "
                    f"online on {session.address} (stream {session.index})"
                )
    return failures


# -- 8. direct messages -------------------------------------------------------------------


def check_directs(bots) -> list[str]:
    by_name, failures = {bot.name: bot for bot in bots}, []
    for bot in bots:
        lines: dict[str, list] = {}
        for a in bot.attempts:
            if a.to:
                lines.setdefault(a.key, []).append(a)
        for tries in lines.values():
            recipient = by_name.get(tries[0].to)
            if recipient is None:
                continue
            texts = {a.text for a in tries}
            got = [d for d in recipient.directs_in if d[0] == bot.name and d[1] in texts]
            if len(got) > 1:
                failures.append(f"{tries[0].to} got {bot.name}'s {tries[0].text} {len(got)} times")
            echoes = [a.answered_t for a in tries if a.outcome == "echo"]
            if echoes and not got:
                session = _online_at(recipient, echoes[0], 1.0)
                if session is not None and (
                    session.ended_t is None or session.ended_t > echoes[0] + LOSS_GRACE_S
                ):
                    failures.append(
                        f"{bot.name}'s {tries[0].text} to {tries[0].to} was echoed at "
                        f"{echoes[0]:.1f} s and never arrived (stream {session.index} open)"
                    )
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

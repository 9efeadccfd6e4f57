"""Small chat servers that misbehave in one way on purpose, for the client's tests.

A real server cannot be made to drop a call between storing a message and
echoing it, or to answer NOT_SENT without a Redis cluster in trouble; these
can. Each is a real gRPC server on a free port; `serving(servicer)` starts
one and stops it at the end of the `with` block. They speak just enough of
the protocol: the join is confirmed with the joiner's USER_JOINED, and
messages get increasing ids.
"""

import contextlib
import itertools
import threading
from concurrent import futures

import grpc

import chat_pb2 as pb
import chat_pb2_grpc


@contextlib.contextmanager
def serving(servicer):
    """A gRPC server for `servicer` on 127.0.0.1:<free port>; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(8))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)


def joined(name: str) -> pb.ServerEvent:
    return pb.ServerEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))


def notice(text: str, code) -> pb.ServerEvent:
    return pb.ServerEvent(system_event=pb.SystemEvent(message=text, code=code))


class Echoing(chat_pb2_grpc.ChatServiceServicer):
    """Confirms the join, then answers each message through `answer` (override it)."""

    def __init__(self):
        self.lock = threading.Lock()  # guards received, keys, stored and _ids
        self.received: list[str] = []  # every message text, each time it arrived
        self.keys: list[str] = []  # the key of each, in the same order
        self.stored: list[pb.ChatMessageEvent] = []
        self._ids = itertools.count(1)

    def Chat(self, request_iterator, context):
        join = next(request_iterator).user_event
        yield from self.replay(join.last_seen_id)
        yield joined(join.username)
        for event in request_iterator:  # until the client leaves
            if event.WhichOneof("event") == "chat_message":
                with self.lock:
                    self.received.append(event.chat_message.message)
                    self.keys.append(event.chat_message.key)
                answer = self.answer(join.username, event.chat_message.message, context)
                if answer is not None:
                    yield answer

    def replay(self, last_seen_id: str):
        return []

    def store(self, name: str, text: str) -> pb.ChatMessageEvent:
        with self.lock:
            message = pb.ChatMessageEvent(username=name, message=text, id=f"{next(self._ids)}-0")
            self.stored.append(message)
        return message

    def answer(self, name: str, text: str, context):
        return pb.ServerEvent(chat_message=self.store(name, text))


class NotSentOnce(Echoing):
    """Answers each text NOT_SENT the first time it comes, echoes it the second."""

    def answer(self, name, text, context):
        with self.lock:
            first = self.received.count(text) == 1
        if first:
            return notice("not sent: the chat is reconnecting, send it again", pb.NOT_SENT)
        return super().answer(name, text, context)


class NeverSends(Echoing):
    """Answers every message NOT_SENT, as a server cut off from a Redis others share."""

    def answer(self, name, text, context):
        return notice("not sent: the chat is reconnecting, send it again", pb.NOT_SENT)


class NeverEchoes(Echoing):
    """Takes every message and answers nothing, as a server stuck on its store."""

    def answer(self, name, text, context):
        return None


class DropsBeforeTheEcho(Echoing):
    """Stores the first message, then ends the call before echoing it; replays on rejoin."""

    def answer(self, name, text, context):
        stored = self.store(name, text)
        if stored.id == "1-0":
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return pb.ServerEvent(chat_message=stored)

    def replay(self, last_seen_id: str):
        seen = int(last_seen_id.split("-")[0]) if last_seen_id else 0
        with self.lock:
            missed = [m for m in self.stored if int(m.id.split("-")[0]) > seen]
        for message in missed:
            replayed = pb.ChatMessageEvent()
            replayed.CopyFrom(message)
            replayed.replay = True
            yield pb.ServerEvent(chat_message=replayed)


class DropsTheFirstLine(Echoing):
    """Ends the call when the first message arrives, before storing it; echoes after that."""

    def answer(self, name, text, context):
        with self.lock:
            first = len(self.received) == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return super().answer(name, text, context)


class RefusesTheFirstJoin(Echoing):
    """Refuses the first join UNAVAILABLE, as a server cut off from the Redis it shares."""

    def __init__(self):
        super().__init__()
        self.joins = 0  # calls so far (gRPC's threads: under self.lock)

    def Chat(self, request_iterator, context):
        with self.lock:
            self.joins += 1
            first = self.joins == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "cannot join now: the chat is reconnecting")
        yield from super().Chat(request_iterator, context)


class NeverAnswers(chat_pb2_grpc.ChatServiceServicer):
    """Takes the join and says nothing, as a server stuck on a partitioned Redis."""

    def Chat(self, request_iterator, context):
        for _ in request_iterator:  # until the client gives up
            pass
        return
        yield  # a generator that yields nothing

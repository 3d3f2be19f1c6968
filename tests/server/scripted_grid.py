"""An in-process Flower Grid for unit tests of the round loop: each node answers as a script says."""

from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.serverapp import Grid


class ScriptedGrid(Grid):
    """Each node answers with what ``behaviour(node_id, message)`` returns: content, an Error, or None (silent)."""

    def __init__(self, nodes, behaviour):
        self.nodes, self.behaviour = list(nodes), behaviour
        self.outbox: dict[str, Message] = {}

    def set_run(self, run):  # pragma: no cover
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return self.nodes

    def create_message(self, *a, **k):  # pragma: no cover - not used by the loop
        raise NotImplementedError

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{len(self.outbox)}-{i}"
            msg.metadata.__dict__["_message_id"] = mid
            answer = self.behaviour(msg.metadata.dst_node_id, msg)
            if answer is not None:
                reply = (
                    Message(answer, reply_to=msg)
                    if isinstance(answer, Error)
                    else Message(content=answer, reply_to=msg)
                )
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                self.outbox[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        out = [self.outbox.pop(m) for m in list(message_ids) if m in self.outbox]
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - the loop streams instead
        raise NotImplementedError

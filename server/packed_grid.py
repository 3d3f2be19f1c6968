"""A Grid that sends each message's arrays as one Array and unpacks the replies (``shared_models/packed_arrays.py``).

On Flower's Deployment Engine every object of a message (each record, each Array, each Array's chunk) is its own
request to the SuperLink, from the ServerApp and from the node; packing a model's arrays into one Array cuts a
round's requests by more than half. The strategy and the round loop never see a packed record: messages are
packed on their way out and replies unpacked on their way in. fedge's ClientApp (its ``packed_arrays_mod``) answers
a packed message in kind and a plain one plainly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from server.grid_view import GridView
from shared_models.packed_arrays import PackedArraysError, is_packed, pack_content, unpack_content

log = logging.getLogger("fedge.server")


def packs_by_default(grid: Grid) -> bool:
    """Whether ``pack-arrays = true`` packs on ``grid``: on a deployment (the ServerApp talks to a SuperLink), not in
    Flower's simulation (its ``InMemoryGrid``), whose messages never leave the process as objects. The class is
    recognised by name: tests/server/test_packed_grid.py imports Flower's two grids by path and fails if they move."""
    return type(grid).__name__ != "InMemoryGrid"


class PackedArraysGrid(GridView):
    """``grid``, with the arrays of the messages pushed packed and those of the replies pulled unpacked."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.packed_replies = 0
        """Replies whose arrays came packed (fedge's ClientApp answers a packed message so), since the last
        :meth:`take_packed_replies`."""

    def take_packed_replies(self) -> int:
        """How many replies came packed since the last call (the run record's ``packed-replies`` of a round)."""
        count, self.packed_replies = self.packed_replies, 0
        return count

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(_packed(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._unpacked(self.grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._unpacked(self.grid.send_and_receive(_packed(messages), timeout=timeout))

    def _unpacked(self, replies: Iterable[Message]) -> list[Message]:
        """The replies with their arrays unpacked. A reply whose packed arrays cannot be read back (cut or altered
        on the way) loses them, with a warning naming its node: the round loop then counts it as failed and goes on
        with the others, as for any reply without arrays."""
        replies = list(replies)
        for reply in replies:
            if not reply.has_content():
                continue
            try:
                if unpack_content(reply.content):
                    self.packed_replies += 1
            except PackedArraysError as e:
                log.warning("node %s sent arrays that cannot be read: %s", reply.metadata.src_node_id, e)
                for name, record in list(reply.content.array_records.items()):
                    if is_packed(record):
                        del reply.content[name]
        return replies


def _packed(messages: Iterable[Message]) -> list[Message]:
    shared: dict[int, ArrayRecord] = {}  # the global model, which every message of a round carries: packed once
    messages = list(messages)
    for msg in messages:
        if msg.has_content():
            pack_content(msg.content, shared)
    return messages

"""Which session a user means: a full id, a unique prefix, or ``last`` (pure).

``orchctl`` resolves what the user typed client-side, from one ``Status``
call listing every session, before it sends the command: the daemon only
ever sees full ids.  ``s-1a2b`` and ``1a2b`` are both prefixes of
``s-1a2b3c4d``; ``last`` is the most recently submitted session.  A full id
(``s-`` and eight hex digits) is sent as it is, without the extra call.
"""

from __future__ import annotations

import re

LAST = "last"
FULL_ID = re.compile(r"s-[0-9a-f]{8}")


class NoMatch(Exception):
    """No session is meant by the text (``not_found``)."""


class Ambiguous(Exception):
    """Several sessions start with the text; ``candidates`` are their ids."""

    def __init__(self, text: str, candidates: list[str]) -> None:
        super().__init__(text)
        self.candidates = candidates


def is_full(text: str) -> bool:
    return FULL_ID.fullmatch(text) is not None


def pick(text: str, sessions: list[tuple[str, float]]) -> str:
    """The id ``text`` means among ``sessions`` (``(id, created_ts)`` in submit order).

    Raises ``NoMatch`` or ``Ambiguous``.  An exact id wins over a prefix.
    """
    ids = [sid for sid, _ in sessions]
    if text == LAST:
        if not sessions:
            raise NoMatch("there are no sessions yet, so no 'last' one")
        # the newest by created_ts; among equal stamps the later submit (list order)
        newest = max(range(len(sessions)), key=lambda i: (sessions[i][1], i))
        return ids[newest]
    if text in ids:
        return text
    found = [sid for sid in ids if text and (sid.startswith(text) or sid.startswith("s-" + text))]
    if not found:
        raise NoMatch(f"no session {text!r}")
    if len(found) > 1:
        raise Ambiguous(text, found)
    return found[0]

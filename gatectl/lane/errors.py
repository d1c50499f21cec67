"""Who broke the rules: a gatectl adapter feeding the core something impossible.

Bad bytes from a device or a peer are not errors of this kind: the codecs count and drop
them (``drivers/codecs/errors.py``), the authority clients raise ``AuthorityError``.
"""


class LaneProtocolError(Exception):
    """A gatectl adapter fed the lane core something impossible: a bug in gatectl."""

"""Who broke the rules: gatectl itself, or something outside it."""


class LaneProtocolError(Exception):
    """A gatectl adapter fed the lane core something impossible: a bug in gatectl."""


class DeviceProtocolError(Exception):
    """A device or peer sent something malformed: count it, log it, carry on."""

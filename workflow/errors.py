"""One exception type for problems the user can fix (bad config, missing files)."""


class UserError(Exception):
    """An error caused by input the user controls; the message says what to do."""

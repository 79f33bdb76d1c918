"""User errors: bad config, missing input. The CLI prints them as one paragraph and exits 2."""


class UserError(Exception):
    """A problem the user can fix (a config field, an input path); never a bug in phicurate."""

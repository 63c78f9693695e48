"""The one error type the user sees: a sentence saying what is wrong and what to do."""


class UserError(Exception):
    """A problem with the user's input or machine, reported as one line and a non-zero exit.

    The message is a complete sentence naming what is wrong and what to do about it.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

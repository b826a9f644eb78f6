"""The one exception type that means "the user asked for something that cannot be done".

It carries a one-line message that says what was wrong and what to do. The CLI prints it
without a traceback; the UI shows it in the page. Any other exception is a bug.
"""


class QuantbenchError(Exception):
    """Bad input or an unusable environment, explained in one line."""

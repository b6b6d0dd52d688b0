"""Errors caused by user input (a wrong depth, a weights file that does not fit, ...).

They carry ``user_error = True`` so that command-line front ends print the one-line message
instead of a traceback, without this package depending on them.
"""


class BackboneError(ValueError):
    user_error = True


class WeightsError(BackboneError):
    pass

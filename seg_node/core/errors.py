"""The base of the errors a user makes and can fix, so the node and the tools report them the same way."""


class UserError(Exception):
    """A mistake in what the user gave (a model file or card, a backend or device, a weight file): its message
    says what to fix. The node stops at start-up with it; a command-line tool exits 2 with it."""

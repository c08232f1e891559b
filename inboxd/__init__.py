"""inboxd: the daemon behind a municipal mailbox for signals of human trafficking."""

__version__ = "0.1.0"

"""Mailbox backends: where signals arrive (IMAP, Maildir, EWS, Graph)."""

"""Outgoing mail transports (SMTP, a Maildir drop for the demo, EWS, Graph)."""

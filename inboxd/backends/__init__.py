"""One home per backend: ``settings`` holds the ``[mailbox]`` and ``[smtp]`` model of
each backend; ``imap``, ``smtp``, ``ews``, ``graph`` and ``maildir`` build their
adapter from it, say which app tokens they need and explain a failed ``inboxd
check``; ``connect`` chooses among them."""

"""The pieces of reading one raw mail, each bounded in time and memory; ``inboxd.parsing``
puts them together into a ``ParsedMessage``."""

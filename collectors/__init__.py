"""Collectors: where events come from.

``sources`` yield raw records (a line or a journal entry) with their position, for
checkpoints; ``parsers`` turn one raw record into zero or one :data:`~sentinel.event.Event`.
Sources know nothing of formats; parsers know nothing of files.
"""

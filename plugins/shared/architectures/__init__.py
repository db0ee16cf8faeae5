"""Where each known architecture keeps its layer stacks, attention and FFN blocks.

``registry`` is the table, plain data without torch (validation reads it); ``checks``
turns it into plan-time findings; ``render`` prints it for ``recipe plugins``;
``modules``, ``attention`` and ``ffn`` resolve its paths on a real model.
"""

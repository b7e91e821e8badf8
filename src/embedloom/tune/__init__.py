"""``embedloom tune``: fit embedloom's settings to this machine and the user's texts.

``search`` (what to keep, pure), ``knobs`` (what to try here, and the config file
written), ``measure`` (a trial: a real server under ``bench``'s load), ``flags``
and ``command`` (the command line).
"""

__all__: list[str] = []

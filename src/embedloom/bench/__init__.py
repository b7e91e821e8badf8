"""``embedloom bench``: load-test any embedding server (OpenAI, TEI or Cohere dialect)
and report what it sustained.

``workload`` makes the texts and request sizes, ``http`` is the load generator's
own small HTTP client, ``api`` speaks the three dialects, ``load`` runs one
closed- or open-loop step, ``report`` summarises and writes the results, and
``command`` ties them to the command line.
"""

__all__: list[str] = []

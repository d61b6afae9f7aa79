"""Dead letters, in one place: what one is (:mod:`.letter`: the record and its headers), and
the operator tools that read them back (:mod:`.reading`: ``dlq list``), replay them
(:mod:`.replay`) and remember what was replayed (:mod:`.progress`). The daemon publishes them
through :mod:`daemon.publisher`. Importing this package imports nothing (the CLI's parser reads
:mod:`.defaults` without loading aiokafka)."""

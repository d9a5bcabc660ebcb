"""Corpus tokenisation: curated image shards -> dual-code token shards (``dualtoken.data.tokens``).

The unit of work is a shard: ``partition`` picks this process's shards from its rank and world size,
``loader`` reads and decodes them on DataLoader workers, ``job`` encodes, writes and marks each shard done
(resumable, atomic, deterministic), ``verify`` decodes a sample back to pixels, ``stats`` summarises code use.
"""

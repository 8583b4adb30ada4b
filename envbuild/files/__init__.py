"""Files on disk, the way every stage writes and finds them: atomic writes (``atomic``), one
envbuild at a time on a folder (``exclusive``), content digests (``digest``), the cache
(``cache``), the templates and schema shipped with envbuild (``resources``).

May import: errors
"""

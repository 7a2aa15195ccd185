"""mffs: Metaflow runs as a read-only filesystem.

mffs.tree       path -> node tree over the `client` object model, with caching; no FUSE import (a package: nodes,
                runs, tasks, code, cards, settings, tree)
mffs.render     how objects become bytes (JSON records, repr.txt, logs)
mffs.exports    typed exports of artifact values (value.json/.txt/.bin/.npy/.csv/.parquet/.png, IncludeFile
                content): one registry of rules, one module per family
mffs.sandbox    the worker processes that unpickle and render untrusted values under memory, CPU and time limits
mffs.readahead  the worker process that lists the next tasks of a walk (attached to the tree as a listing source)
mffs.fuse_ops   the thin mfusepy adapter and kernel-cache policy
mffs.filesystem the same tree as an fsspec filesystem (mffs://)
mffs.source     which datastore and namespace a tree shows (CLI, fstab form, fsspec)
mffs.cli        `mffs mount | umount | ls | cat`
mffs.fstab      `mount -t fuse.mffs SOURCE MOUNTPOINT -o OPTIONS`
"""

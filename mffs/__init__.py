"""mffs: Metaflow runs as a read-only filesystem.

mffs.render  how objects become bytes (JSON records, repr.txt, logs)
mffs.exports typed exports of artifact values (value.json/.txt/.bin/.npy/.csv/.parquet/.png, IncludeFile content)
mffs.tree    path -> node tree over the `client` object model, with caching; no FUSE import
mffs.fuse_ops  the thin mfusepy adapter and kernel-cache policy
mffs.cli     `mffs mount | umount | ls | cat`
"""

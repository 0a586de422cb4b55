"""Indices larger than memory: IVF-PQ with its inverted lists in a file on disk, and every vector at
half precision on disk beside it for an exact re-rank of the candidates.

A build goes as FAISS's own recipe does (faiss/contrib/ondisk.py, whose merge_ondisk it calls):

1. a first pass over the vectors draws the training sample (fixed seed), writes the fp16 store,
   and keeps the exact top 10 of the recall queries;
2. the IVF-PQ is trained on the sample;
3. fill shards: copies of the trained index each take a run of consecutive vectors and are
   written to files of their own, so a build that dies resumes after the last shard written;
4. their inverted lists are merged into one `.ivfdata` file (OnDiskInvertedLists);
5. nprobe and the candidates re-ranked per result are chosen, as they are served, so that
   recall@10 against exact search reaches the target (building).

Served read-only: FAISS maps the `.ivfdata` file itself, and the re-rank reads its rows of the
fp16 store with pread, so a server's own memory is the coarse quantizer, the PQ tables and the
list pages its searches touch, not the index. (FAISS's IO_FLAG_MMAP must not be added for such an
index: with it, FAISS 1.15 crashed here on the first search.) Nothing here holds all the vectors
in memory at once: they come in chunks, twice.

A compaction (clipsearch.store.compaction) reads the store back a block at a time, merged with the live
vectors (refilling.chunks_from_store), and fills the trained index again (`emptied`, `refill_on_disk`:
steps 1, 3 and 4 without the sample, the training and the tuning), or builds it again.
"""

from clipsearch.index.ondisk.building import build_on_disk, is_on_disk_factory
from clipsearch.index.ondisk.passes import Chunks, OnDiskFiles
from clipsearch.index.ondisk.refilling import chunks_from_store, emptied, refill_on_disk
from clipsearch.index.ondisk.serving import VectorStore, load, search

__all__ = ["Chunks", "OnDiskFiles", "VectorStore", "build_on_disk", "chunks_from_store", "emptied",
           "is_on_disk_factory", "load", "refill_on_disk", "search"]

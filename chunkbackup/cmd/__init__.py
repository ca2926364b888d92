"""The console entry points (chunkbackup, chunkbackup-backup)."""
from chunkbackup import memory

# Before any thread allocates: see chunkbackup.memory.
memory.limit_malloc_arenas()

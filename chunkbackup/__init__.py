"""chunkbackup: chunked volume backup drivers in OpenStack Cinder's format."""

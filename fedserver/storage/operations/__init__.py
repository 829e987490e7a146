"""Storage for operators' tools and media: the admin API's listings and purges, the content repository's metadata."""

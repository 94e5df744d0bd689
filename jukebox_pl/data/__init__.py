"""Audio data: audio I/O, webdataset shards, label vocabularies, lyrics, and DataModules."""

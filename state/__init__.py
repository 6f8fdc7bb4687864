"""What is stored per user and per item, how it is encoded, and the RocksDB stores."""

"""What is stored per user and per item, how it is encoded, the local stores, and the project's errors."""

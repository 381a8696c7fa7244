"""Database access: URLs, engines, the embedded server and migrations."""

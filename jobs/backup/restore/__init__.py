"""The restore command: stream or stage a backup into pg_restore, or through SQL into an older server."""

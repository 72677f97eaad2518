"""The edges to the servers: the binlog stream (python-mysql-replication), MySQL queries (PyMySQL) and the
Redis sink with its Lua scripts (redis-py). Everything that speaks a wire protocol lives here."""

"""The worker (``cdc-sync run``): the sync loop over the binlog, the applier thread, the heartbeat prober,
HA leadership, health and systemd glue."""

-- Canon's PostgreSQL backend, version 2: vacuum settings for the tables that churn.
--
-- `deliveries` is a work queue: each delivery inserts a row and its ack deletes it, so the
-- table is mostly dead rows between vacuums, and the index scans of every pull (leased rows,
-- due rows) step over them. PostgreSQL's default waits until a fifth of the table is dead; a
-- queue wants a vacuum after a fixed number of dead rows, at full speed, and statistics that
-- keep up. `dedup` is pruned in bulk by the window; `events` grows fast and its statistics
-- would otherwise describe a much smaller table.
ALTER TABLE {schema}.deliveries SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000
);
ALTER TABLE {schema}.dedup SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 20000
);
ALTER TABLE {schema}.events SET (
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 50000
);

//! Dapr's small languages, sans I/O: the CEL subset of routing rules, and the schedules,
//! durations and times of the Jobs API. `canon-server` uses them; the fuzz targets drive them
//! with arbitrary input.

pub mod rules;
pub mod schedule;

//! canon-sdk's integration tests: typed events generated from the seed catalogs, the
//! dispatcher, privacy hooks, the seed workflows, the remote consumer and the inboxes.

mod catalogs;
mod dispatch;
// Printed by `canon catalog gen rust examples/catalogs/coach.yaml` (a CLI test keeps it current).
#[rustfmt::skip]
#[allow(dead_code, unreachable_pub)]
mod coach_generated;
mod inbox;
mod lifeos;
mod remote;
mod typed;

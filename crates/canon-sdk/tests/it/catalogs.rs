//! Every seed catalog compiles into typed events.

#![allow(dead_code)]

pub(crate) mod coach {
    canon_sdk::catalog!("../../examples/catalogs/coach.yaml");
}
pub(crate) mod lifeos {
    canon_sdk::catalog!("../../examples/catalogs/lifeos.yaml");
}
pub(crate) mod bme {
    canon_sdk::catalog!("../../examples/catalogs/bme.yaml");
}
pub(crate) mod go4u {
    canon_sdk::catalog!("../../examples/catalogs/go4u.yaml");
}
pub(crate) mod todo {
    canon_sdk::catalog!("../../examples/catalogs/todo.yaml");
}

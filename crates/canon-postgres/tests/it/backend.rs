//! What the PostgreSQL backend does beyond the shared contract: migrations, several processes
//! on one schema.

//! End-to-end tests: the real system (embedded Kafka, real databases, HTTP on port 0), driven
//! over HTTP and checked through the API and the components' databases.
//!
//! Set `TEST_DATABASE_URL=postgres://...` to run every test against PostgreSQL instead of SQLite.

mod api;
mod broker;
mod campusg;
mod cancel;
mod chaos;
mod cli;
mod deadlines;
mod delivery;
mod deploy;
mod emails;
mod events;
mod faults;
mod generic;
mod helpers;
mod hostile;
mod instances;
mod observability;
mod procs;
mod pruning;
mod readme;
mod real_kafka;
mod refund;
mod restart;
mod saga_paths;
mod security;
mod soak;
mod upgrade;
mod web;

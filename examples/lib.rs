//! The zeroservices examples live beside this file as example targets; run one from the
//! repository root with `cargo run --release --example NAME`.

#[path = "shared/power.rs"]
pub mod power;

pub mod chat_node;

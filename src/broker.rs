//! Broker process start-up (stub until the store and actors land).

use crate::config::Config;

/// Runs a broker until it is stopped.
pub fn run(_cfg: Config) -> std::io::Result<()> {
    Err(std::io::Error::other("broker not built yet"))
}

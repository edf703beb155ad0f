//! The ADS server (port 15010): state-of-the-world and delta streams, per-connection
//! subscriptions, versions and nonces, ACK/NACK tracking, debounced pushes.

//! The ADS client: subscribes to LDS and CDS, then to the RDS and EDS names they reference, over
//! one gRPC stream (state-of-the-world or delta, as the bootstrap's `api_type` says); validates
//! every resource before ACKing it and hands the accepted set to the [`crate::snapshot::ConfigStore`].

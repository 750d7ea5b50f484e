//! Concurrent-stream and request-rate limits; local and Redis backends; RAII leases.

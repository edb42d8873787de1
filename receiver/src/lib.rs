//! Loa receiver (being written).

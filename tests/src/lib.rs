//! herald end-to-end test support

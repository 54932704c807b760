//! herald-ingress

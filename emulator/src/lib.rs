//! The Teams emulator (being written).

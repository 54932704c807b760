pub mod broadcast;
pub mod delay;
pub mod dispatch;
pub mod emulator;
pub mod ingress;
pub mod pacing;
pub mod park;
pub mod reach;

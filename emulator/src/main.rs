//! `herald-emulator`: the Teams emulator as a process for the local stack. See the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald_emulator::app::run().await
}

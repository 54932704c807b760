//! `herald-emulator`: the Teams emulator as a process for the local stack. See the library.

/// mimalloc rather than glibc's allocator: the services allocate per message, from many
/// threads, and glibc's malloc and free cost a quarter of the dispatcher's time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald_emulator::app::run().await
}

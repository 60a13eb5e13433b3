//! `strait agent`: one per node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::AgentConfig;

/// Arguments of `strait agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Agent configuration (JSON).
    #[arg(long)]
    config: PathBuf,
}

/// Runs the agent until it is stopped.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = AgentConfig::from_file(&args.config)?;
    #[cfg(target_env = "gnu")]
    malloc::tame();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = crate::agent::run(cfg) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// glibc malloc tuned for a long-running proxy.
///
/// By default glibc gives every contending thread an arena of its own (up to 8 per core) and keeps
/// what is freed in it, so the agent stayed at its peak after a burst of connections. Two arenas
/// and a trim whenever much memory lies free hand a burst's memory back to the kernel.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
mod malloc {
    use std::time::Duration;

    /// Free heap memory worth returning to the kernel.
    const TRIM_ABOVE: usize = 1 << 20;

    /// How often the trimmer looks at the heap: often enough that memory comes back within a
    /// second or two of a burst, rarely enough to cost nothing measurable.
    const TRIM_EVERY: Duration = Duration::from_secs(1);

    /// Limits the arenas and starts the trimming thread; call before the runtime starts.
    pub fn tame() {
        // SAFETY: mallopt only sets an allocator parameter; it takes no pointers.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        let trimmer = std::thread::Builder::new()
            .name("malloc-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: both are thread-safe glibc calls without pointer arguments.
                    let free = unsafe { libc::mallinfo2() }.fordblks;
                    if free > TRIM_ABOVE {
                        // SAFETY: as above.
                        unsafe { libc::malloc_trim(0) };
                    }
                }
            });
        if let Err(e) = trimmer {
            tracing::warn!(error = %e, "malloc trimmer not started; freed memory stays in the heap");
        }
    }
}

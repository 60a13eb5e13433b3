//! The `strait` binary: parses the command line and hands over to `strait::cli`.

fn main() -> std::process::ExitCode {
    strait::cli::main()
}

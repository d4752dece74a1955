//! The `courier` command; everything is in the library (`courier_cli`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    courier_cli::main()
}

// examples/mytcp/src/main.rs
//! The whole `courier` command, with the `mytcp` transport in it.

fn main() -> std::process::ExitCode {
    courier::install_plugin(mytcp::MyTcpPlugin);
    courier_cli::main()
}

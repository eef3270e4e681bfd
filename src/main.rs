//! The `rayform` command: parse arguments, run, exit with Terraform's codes.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

use std::process::ExitCode;

fn main() -> ExitCode {
    rekey::install_crypto_provider();
    rekey::cli::main()
}

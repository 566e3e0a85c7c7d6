use std::process::ExitCode;

fn main() -> ExitCode {
    rekey::install_crypto_provider();
    rekey::crash::arm_from_env();
    rekey::cli::main()
}

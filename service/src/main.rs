use std::process::ExitCode;

fn main() -> ExitCode {
    rekey::install_crypto_provider();
    if let Err(e) = rekey::crash::arm_from_env(|point| eprintln!("crash point {point}: aborting")) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    rekey::cli::main()
}

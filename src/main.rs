//! The `forkline` binary: parse, start the logger, run, exit.

fn main() {
    let cli = forkline::cli::Cli::parse_args();
    forkline::logging::init(cli.verbose as i8 - cli.quiet as i8, cli.log_format);
    match forkline::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::exit(e.exit_code());
        }
    }
}

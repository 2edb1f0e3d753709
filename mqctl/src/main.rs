//! The `mqctl` binary: parses the command line, runs the command, prints its output, and exits
//! with the code of the failure (see `mqctl --help`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = mqctl::Cli::parse();
    match mqctl::run(&cli) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`mqctl topics | head -1`) is not a failure of the command.
            let _ = stdout.write_all(output.text.as_bytes());
            let _ = stdout.flush();
            ExitCode::from(output.code)
        }
        Err(e) => {
            eprintln!("mqctl: {e}");
            ExitCode::from(&e)
        }
    }
}

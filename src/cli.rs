//! Command line: parses arguments and calls into the library. Kept thin.

pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}

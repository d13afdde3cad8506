fn main() -> std::process::ExitCode {
    oomguard::cli::main()
}

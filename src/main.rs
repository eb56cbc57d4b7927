fn main() {
    std::process::exit(regfs::cli::main());
}
